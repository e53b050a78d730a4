"""What every channel does: deliver one prepared message, or say why not.

Implementations: :mod:`~worker.channels.smtp`, :mod:`~worker.channels.outbox` (email),
:mod:`~worker.channels.webhook` (HTTP posts), :mod:`~worker.channels.memory` (tests);
:mod:`~worker.channels.router` hands each message to the one its rule names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outgoing:
    """One message ready for the wire. ``key`` is the delivery key (for logs and file names,
    and the idempotency key of a webhook request).

    ``channel`` picks the channel (``email``, ``webhook``); ``endpoint`` is the named webhook
    and ``content_type`` the type of ``data`` (an email is ``message/rfc822``).
    """

    key: str
    channel: str
    sender: str
    recipient: str
    message_id: str
    data: bytes
    content_type: str = "message/rfc822"
    endpoint: str = ""


@dataclass(frozen=True)
class Receipt:
    """Proof of delivery: the server's reply, or where the message was written."""

    detail: str


class Channel(Protocol):
    """Sends :class:`Outgoing` messages; raises :class:`~worker.errors.DeliveryError` subclasses.

    ``TransientDeliveryError``: try again later. ``PermanentDeliveryError``: never for this
    recipient. Implementations are safe to call from several threads.
    """

    def send(self, message: Outgoing) -> Receipt: ...

    def close(self) -> None: ...


#: Told the outcome of one message as soon as it is known: the receipt, or the exception
#: ``Channel.send`` would have raised.
Done = Callable[[Outgoing, Receipt | Exception], None]


def send_each(channel: Channel, messages: Iterable[Outgoing], done: Done) -> None:
    """Send ``messages`` one after the other and call ``done`` after each, before the next
    goes out (so an outcome is recorded before the next message can be lost in a crash).

    A channel with a ``send_each`` method of its own (SMTP: one event loop for the whole
    batch) is handed the lot; any other is called message by message. ``messages`` may be a
    generator that renders lazily.
    """
    own: Callable[[Iterable[Outgoing], Done], None] | None = getattr(channel, "send_each", None)
    if own is not None:
        own(messages, done)
        return
    for message in messages:
        try:
            receipt = channel.send(message)
        except Exception as exc:  # classified by the caller, exactly as a raise from send()
            done(message, exc)
        else:
            done(message, receipt)
