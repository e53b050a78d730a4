"""Hands each message to the channel its rule names: one :class:`Channel` for the deliverer."""

from __future__ import annotations

from collections.abc import Mapping

from worker.channels.base import Channel, Outgoing, Receipt
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

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
