"""What every channel does: deliver one prepared message, or say why not.

Implementations: :mod:`~worker.channels.smtp`, :mod:`~worker.channels.outbox` (email),
:mod:`~worker.channels.webhook` (HTTP posts), :mod:`~worker.channels.memory` (tests);
:mod:`~worker.channels.router` hands each message to the one its rule names.
"""

from __future__ import annotations

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
