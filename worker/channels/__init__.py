"""Channels that deliver messages: SMTP, an ``.eml`` outbox, and an in-memory stub."""

from __future__ import annotations

from worker.channels.base import Channel, Outgoing, Receipt
from worker.channels.memory import MemoryChannel
from worker.channels.outbox import OutboxChannel
from worker.channels.smtp import SmtpChannel
from worker.settings import Settings

__all__ = [
    "Channel",
    "MemoryChannel",
    "OutboxChannel",
    "Outgoing",
    "Receipt",
    "SmtpChannel",
    "email_channel",
]


def email_channel(settings: Settings) -> Channel:
    """SMTP when ``CRM_SMTP_HOST`` is set, else the ``.eml`` outbox."""
    if settings.smtp_host:
        return SmtpChannel(settings)
    return OutboxChannel(settings.effective_outbox_dir)
