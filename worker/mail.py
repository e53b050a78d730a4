"""Turning a rendered message into the exact bytes an SMTP server receives.

Serialized with ``policy.SMTP`` (CRLF line ends) and ``max_line_length=998``: Python's default
78-column folding rewrites a long header without fold points (a ``List-Unsubscribe`` URL) as an
encoded word that mail clients ignore. The bytes are handed to the channel as they are, so the
SMTP client cannot re-flatten them with its own policy.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from worker.rendering import RenderedMessage

#: The serialization policy of every mail we send (see module docstring).
WIRE_POLICY = policy.SMTP.clone(max_line_length=998)


def message_id_for(key: str, domain: str) -> str:
    """A Message-ID derived from the delivery key: a duplicate that slips through a crash
    window carries the same Message-ID, so receivers and our own tests can tell."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def display_address(name: str, address: str) -> str:
    """``"José Peña" <jose@example.com>`` with the name quoted/encoded as the header needs."""
    local, _, domain = address.rpartition("@")
    clean = " ".join(name.replace("\r", " ").replace("\n", " ").replace("\0", " ").split())
    return str(Address(display_name=clean, username=local, domain=domain))


def compose(
    message: RenderedMessage,
    *,
    sender: str,
    recipient: str,
    recipient_name: str,
    message_id: str,
    date: datetime,
) -> bytes:
    """The complete RFC 5322 message: headers, a text part and an HTML alternative."""
    mail = EmailMessage(policy=WIRE_POLICY)
    mail["From"] = sender
    mail["To"] = display_address(recipient_name, recipient) if recipient_name else recipient
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(date)
    mail["Message-ID"] = message_id
    mail["Auto-Submitted"] = "auto-generated"
    mail["Content-Language"] = message.locale
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    return mail.as_bytes(policy=WIRE_POLICY)
