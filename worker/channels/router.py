"""Hands each message to the channel its rule names: one :class:`Channel` for the deliverer."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from worker.channels.base import Channel, Done, Outgoing, Receipt, send_each
from worker.errors import PermanentDeliveryError


class ChannelRouter:
    """Routes :class:`Outgoing` messages by ``channel`` (``email``, ``webhook`` …)."""

    def __init__(self, channels: Mapping[str, Channel]) -> None:
        self.channels = dict(channels)

    def send(self, message: Outgoing) -> Receipt:
        channel = self.channels.get(message.channel)
        if channel is None:
            raise PermanentDeliveryError(f"no {message.channel!r} channel is configured")
        return channel.send(message)

    def send_each(self, messages: Iterable[Outgoing], done: Done) -> None:
        """Each run of consecutive messages for one channel goes to that channel's own
        ``send_each`` (lazily: ``messages`` may be a generator)."""
        for name, run in itertools.groupby(messages, key=lambda message: message.channel):
            channel = self.channels.get(name)
            if channel is None:
                for message in run:
                    done(message, PermanentDeliveryError(f"no {name!r} channel is configured"))
                continue
            send_each(channel, run, done)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
