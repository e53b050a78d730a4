"""Channels that deliver messages: SMTP, an ``.eml`` outbox, webhooks, and an in-memory stub."""

from __future__ import annotations

from collections.abc import Callable

from worker.channels.base import Channel, Outgoing, Receipt
from worker.channels.memory import MemoryChannel
from worker.channels.outbox import OutboxChannel
from worker.channels.router import ChannelRouter
from worker.channels.smtp import SmtpChannel
from worker.channels.webhook import WebhookChannel
from worker.settings import Settings

__all__ = [
    "Channel",
    "ChannelRouter",
    "MemoryChannel",
    "OutboxChannel",
    "Outgoing",
    "Receipt",
    "SmtpChannel",
    "WebhookChannel",
    "all_channels",
    "email_channel",
]


def email_channel(settings: Settings, *, sign: Callable[[bytes], bytes] | None = None) -> Channel:
    """SMTP when ``CRM_SMTP_HOST`` is set, else the ``.eml`` outbox. ``sign``: the DKIM signer
    of the composed messages, for those SMTP must re-encode (see :class:`SmtpChannel`)."""
    if settings.smtp_host:
        return SmtpChannel(settings, sign=sign)
    return OutboxChannel(settings.effective_outbox_dir)


def all_channels(settings: Settings, *, sign: Callable[[bytes], bytes] | None = None) -> Channel:
    """Every configured channel behind one router: ``email`` and ``webhook``."""
    return ChannelRouter(
        {
            "email": email_channel(settings, sign=sign),
            "webhook": WebhookChannel.from_settings(settings),
        }
    )
