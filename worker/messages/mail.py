"""Turning a rendered message into the exact bytes an SMTP server receives.

Serialized like ``policy.SMTP`` (CRLF line ends) but with ``max_line_length=998`` for ASCII
headers: Python's default 78-column folding rewrites a long header without fold points (a
``List-Unsubscribe`` URL) as an encoded word that mail clients ignore. Headers that need
encoding anyway are folded narrowly (see :class:`_WirePolicy`). The bytes are handed to the
channel as they are, so the SMTP client cannot re-flatten them with its own policy.

Every address header is built from :class:`~email.headerregistry.Address` objects, never by
pasting strings: a display name like ``Smith, John <x@evil.com>\r\nBcc: y@evil.com`` becomes one
quoted (or RFC 2047 encoded) phrase of a single mailbox. A recipient whose local part is not
ASCII (``jürgen@…``, or a configured sender or Reply-To like that) can only be written as
UTF-8 (RFC 6532); such a message is serialized with ``policy.SMTPUTF8`` and needs a relay that
offers SMTPUTF8 (:mod:`worker.channels.smtp_extensions`).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import parseaddr
from functools import lru_cache

from worker.constants import ENCODED_HEADER_FOLD_COLUMNS, MAX_DISPLAY_NAME_CHARS
from worker.messages.rendering import RenderedMessage
from worker.messages.unsubscribe import UnsubscribeLinks
from worker.messages.wire import date_value, message_bytes


class _WirePolicy(EmailPolicy):
    """``policy.SMTP`` with lines of up to 998 octets, except where RFC 2047 needs short ones.

    A header that is pure ASCII is written unfolded up to 998 octets, so a long token is never
    turned into an encoded word. A header that must be encoded (a name with ü, an emoji
    subject) is folded at 76 columns, which keeps each encoded word within RFC 2047's 75
    characters; at 998 Python would write one encoded word of hundreds of characters.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        if str(value).isascii():
            return super().fold_binary(name, value)
        narrow = self.clone(max_line_length=ENCODED_HEADER_FOLD_COLUMNS)
        return EmailPolicy.fold_binary(narrow, name, value)


#: Characters of a display name that become spaces (C0 controls and DEL).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


#: The serialization policy of every mail we send (see module docstring).
WIRE_POLICY = _WirePolicy(linesep="\r\n", max_line_length=998)
#: The same for a recipient with a non-ASCII local part (raw UTF-8 headers, RFC 6532).
WIRE_POLICY_UTF8 = WIRE_POLICY.clone(utf8=True)


def message_id_for(key: str, domain: str) -> str:
    """A Message-ID derived from the delivery key: a duplicate that slips through a crash
    window carries the same Message-ID, so receivers and our own tests can tell."""
    return f"<{key_digest(key)}@{domain}>"


def key_digest(key: str) -> str:
    """32 hex digits derived from the delivery key: the left part of its Message-ID and the
    tag of its VERP envelope sender."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


#: The tag a VERP bounce address carries: the key digest after the last ``+``.
VERP_TAG = re.compile(r"\+([0-9a-f]{32})@", re.IGNORECASE)


def verp_sender(bounce_address: str, key: str) -> str:
    """The envelope sender of the delivery ``key`` under VERP: ``bounces+<digest>@domain`` for
    ``bounces@domain``. A bounce comes back to that address, so it names its delivery even
    when it quotes nothing of the mail (most relays deliver ``bounces+…`` to ``bounces``)."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{key_digest(key)}@{domain}"


def verp_tag(address: str) -> str | None:
    """The key digest in a VERP address (lower case), or None when it carries none."""
    match = VERP_TAG.search(address)
    return match.group(1).lower() if match else None


def display_address(name: str, address: str) -> str:
    """``"José Peña" <jose@example.com>`` with the name quoted/encoded as the header needs."""
    return str(mailbox(name, address))


def mailbox(name: str, address: str) -> Address:
    """One mailbox: control characters in the name become spaces, the name is one phrase
    of at most :data:`MAX_DISPLAY_NAME_CHARS` characters."""
    local, _, domain = address.rpartition("@")
    clean = " ".join(_CONTROL.sub(" ", name).split())
    if len(clean) > MAX_DISPLAY_NAME_CHARS:
        clean = clean[: MAX_DISPLAY_NAME_CHARS - 1].rstrip() + "…"
    return Address(display_name=clean, username=local, domain=domain)


@lru_cache(maxsize=64)  # the configured sender: the same few values for every message
def parse_mailbox(value: str) -> Address:
    """An operator-configured ``Name <box@domain>`` (validated by the settings) as a mailbox."""
    name, address = parseaddr(value)
    return mailbox(name, address)


def needs_smtputf8(address: str) -> bool:
    """Whether ``address`` can only travel with SMTPUTF8 (a non-ASCII local part)."""
    return not address.isascii()


def compose(
    message: RenderedMessage,
    *,
    sender: str,
    recipient: str,
    recipient_name: str,
    message_id: str,
    date: datetime,
    reply_to: str | None = None,
    unsubscribe: UnsubscribeLinks | None = None,
    list_id: str | None = None,
) -> bytes:
    """The complete RFC 5322 message: headers, a text part and an HTML alternative.

    ``sender`` and ``reply_to`` are ``Name <box@domain>`` as configured; ``unsubscribe`` adds
    ``List-Unsubscribe`` and the RFC 8058 one-click ``List-Unsubscribe-Post``; ``list_id``
    (RFC 2919, ``<rule.domain>``) lets receivers group and filter the messages of one rule.
    """
    boxes = [parse_mailbox(sender), mailbox(recipient_name, recipient)]
    if reply_to:
        boxes.append(parse_mailbox(reply_to))
    # A non-ASCII local part has no encoded form (RFC 2047 §5 forbids encoded words in an
    # addr-spec): any such address makes the whole header UTF-8, for a relay with SMTPUTF8.
    utf8 = any(needs_smtputf8(box.username) for box in boxes)
    wire = WIRE_POLICY_UTF8 if utf8 else WIRE_POLICY
    headers: list[tuple[str, str | Address]] = [("From", boxes[0]), ("To", boxes[1])]
    if reply_to:
        headers.append(("Reply-To", boxes[2]))
    headers += [
        ("Subject", message.subject),
        ("Date", date_value(date)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
    ]
    if unsubscribe is not None:
        headers.append(("List-Unsubscribe", unsubscribe.header()))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    if list_id:
        headers.append(("List-Id", list_id))
    fast = message_bytes(
        wire, headers, text=message.text, html=message.html, language=message.locale
    )
    if fast is not None:
        return fast
    return _through_email_package(wire, headers, message)


def _through_email_package(
    wire: EmailPolicy, headers: list[tuple[str, str | Address]], message: RenderedMessage
) -> bytes:
    """What :func:`worker.messages.wire.message_bytes` writes, built by the email package itself
    (the reference for the fast path, and the path for anything unusual)."""
    mail = EmailMessage(policy=wire)
    for name, value in headers:
        mail[name] = value
    mail.set_content(message.text)
    # add_alternative() would give the HTML part a MIME-Version of its own (an EmailMessage's
    # set_content() adds one); RFC 2045 wants it once, in the message's header.
    html = EmailMessage(policy=wire)
    html.set_content(message.html, subtype="html")
    del html["MIME-Version"]
    mail.make_alternative()
    mail.attach(html)
    # After set_content(), which deletes every Content-* header of the message it fills.
    mail["Content-Language"] = message.locale
    return mail.as_bytes(policy=wire)
