"""What a mail in the feedback mailbox says: pure classification of one mail's bytes.

The unsubscribe/bounce mailbox receives five kinds of mail, told apart in this order:

* ``hard-bounce`` / ``soft-bounce`` — a delivery status notification (RFC 3464,
  ``multipart/report; report-type=delivery-status``). A recipient whose ``Action`` is
  ``failed`` is judged like an SMTP reply by :func:`worker.channels.replies.classify`: a bad address
  (5.1.x, 5.2.1) is a hard bounce; a temporary failure (4.x.x) or a full mailbox (5.2.2) is a
  soft bounce; a refusal of *us* (5.7.x) is never the recipient's fault and is ``other``. Mail
  that is not a proper DSN is handed to flufl.bounce, whose detectors know qmail, Exim,
  Postfix, Exchange and other home-made formats.
* ``complaint`` — a feedback loop report (RFC 5965 ARF, ``report-type=feedback-report``):
  the recipient pressed "this is spam".
* ``unsubscribe`` — the ``mailto:`` of ``List-Unsubscribe``: its subject is
  ``unsubscribe <token>``; the token is verified by the caller (it needs the secret).
* ``auto-reply`` — a vacation notice or other automatic answer (``Auto-Submitted:
  auto-replied``, RFC 3834, and the common non-standard markers).
* ``other`` — anything else, including mail that cannot be read at all; ``reason`` says why.

Where it can, the classification names the Message-ID of *our* mail that bounced (quoted in
the DSN's ``message/rfc822`` or ``text/rfc822-headers`` part, or in the body of a home-made
bounce), which ties the bounce to its delivery (:func:`worker.messages.mail.message_id_for`);
and the VERP tag of the address it was sent to (``bounces+<digest>@…``, with
``CRM_VERP_ADDRESS``), which ties even a bounce that quotes nothing of our mail.

Example::

    >>> feedback = classify(raw_dsn_bytes)                       # doctest: +SKIP
    >>> feedback.kind, feedback.address, feedback.reason
    ('hard-bounce', 'gone@example.com', '5.1.1 smtp; 550 5.1.1 user unknown')
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, replace
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Literal

from flufl.bounce import all_failures

from worker.channels.replies import classify as classify_reply
from worker.channels.replies import enhanced_status
from worker.constants import MAX_FEEDBACK_MAIL_BYTES
from worker.messages.mail import verp_tag

Kind = Literal["hard-bounce", "soft-bounce", "complaint", "unsubscribe", "auto-reply", "other"]

#: Longest reason kept: a reason ends up in the suppression list and in log lines.
MAX_REASON_CHARS = 300
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*unsubscribe\s+(\S+)\s*$", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
#: Subjects of automatic answers from systems that set no header saying so.
_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response)|"
    r"abwesenheitsnotiz|vacation|r[ée]ponse automatique)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Feedback:
    """One classified mail. ``address`` is the recipient it concerns (the bounced or
    complaining one; for an unsubscribe, the sender of the request); ``token`` the
    unsubscribe token; ``original_message_id`` the Message-ID of our mail it answers."""

    kind: Kind
    reason: str
    address: str | None = None
    token: str | None = None
    original_message_id: str | None = None
    message_id: str | None = None
    #: The delivery digest of the VERP address this mail came to (``bounces+<digest>@…``).
    verp: str | None = None


def classify(raw: bytes, *, max_bytes: int = MAX_FEEDBACK_MAIL_BYTES) -> Feedback:
    """The classification of one mail, given as its bytes. Never raises: a mail that cannot
    be read is ``other`` with the reason."""
    if len(raw) > max_bytes:
        return Feedback("other", f"too large to read ({len(raw)} bytes, limit {max_bytes})")
    try:
        message = email.message_from_bytes(raw)
    except Exception as exc:  # the parser is lenient, but one bad mail must not stop the run
        return Feedback("other", _cut(f"unreadable: {type(exc).__name__}: {exc}"))
    if not message.keys():
        return Feedback("other", "no headers: not a mail")
    try:
        found = _classify(message)
        tag = _verp(message)
        return replace(found, verp=tag) if tag else found
    except Exception as exc:  # flufl.bounce's heuristics and odd MIME trees raise on garbage
        return Feedback(
            "other", _cut(f"unreadable: {type(exc).__name__}: {exc}"), message_id=_own_id(message)
        )


def _classify(message: Message) -> Feedback:
    own_id = _own_id(message)
    report_type = str(message.get_param("report-type", "", header="content-type")).lower()
    if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _complaint(message, own_id)
    if message.get_content_type() == "multipart/report" and report_type == "delivery-status":
        found = _dsn(message, own_id)
        # A delay warning or a success notice: the mail may still arrive, nothing to count.
        return found or Feedback("other", "delivery status without a failure", message_id=own_id)
    token = _unsubscribe_token(message)
    if token is not None:
        sender = parseaddr(_header(message, "From"))[1]
        return Feedback(
            "unsubscribe", "mailto unsubscribe", sender or None, token, message_id=own_id
        )
    bounce = _other_bounce(message, own_id)
    if bounce is not None:
        return bounce
    auto = _auto_reply(message)
    if auto is not None:
        return Feedback("auto-reply", auto, message_id=own_id)
    subject = _header(message, "Subject")
    if subject.strip().lower() == "unsubscribe":
        return Feedback("other", "unsubscribe request without a token", message_id=own_id)
    reason = _cut(f"not a bounce, complaint or unsubscribe: {subject!r}")
    return Feedback("other", reason, message_id=own_id)


def _complaint(message: Message, own_id: str | None) -> Feedback:
    fields = _first_part_headers(message, "message/feedback-report")
    original = _original_headers(message)
    feedback_type = _field(fields, "Feedback-Type") or "abuse"
    address = _bare(_field(fields, "Original-Rcpt-To")) or (
        _bare(original.get("To", "")) if original is not None else None
    )
    if address is None:
        return Feedback("other", "complaint that names no recipient", message_id=own_id)
    source = _field(fields, "Reported-Domain") or _field(fields, "User-Agent") or "a mail provider"
    return Feedback(
        "complaint",
        _cut(f"complaint ({feedback_type}) reported by {source}"),
        address,
        original_message_id=_original_id(message, original),
        message_id=own_id,
    )


def _dsn(message: Message, own_id: str | None) -> Feedback | None:
    """The worst failed recipient of a DSN: a hard bounce before a soft one; ``None`` when no
    recipient failed (a delay warning or a success notice is left to the later checks)."""
    blocks = _part_blocks(message, "message/delivery-status")
    original_id = _original_id(message, _original_headers(message))
    found: list[Feedback] = []
    for block in blocks[1:]:  # the first block is about the message, the rest per recipient
        if _field(block, "Action").lower() != "failed":
            continue
        address = _bare(_field(block, "Final-Recipient")) or _bare(
            _field(block, "Original-Recipient")
        )
        if address is None:
            continue
        status = _field(block, "Status")
        diagnostic = " ".join(_field(block, "Diagnostic-Code").split())
        reason = _cut(f"{status} {diagnostic}".strip() or "delivery failed")
        kind = _bounce_kind(status, diagnostic)
        found.append(Feedback(kind, reason, address, None, original_id, own_id))
    if not found:
        return None
    order = {"hard-bounce": 0, "soft-bounce": 1, "other": 2}
    return min(found, key=lambda f: order.get(f.kind, 3))


def _bounce_kind(status: str, diagnostic: str) -> Kind:
    parsed = enhanced_status(status)
    if parsed is None:
        # No usable status: the diagnostic (an SMTP reply) may still carry one.
        code = re.match(r"^\s*(?:smtp;\s*)?([245]\d\d)\b", diagnostic, re.IGNORECASE)
        if code is None:
            return "soft-bounce"  # a failure nobody explained: count it, do not suppress yet
        verdict = classify_reply(int(code.group(1)), diagnostic.split(";")[-1], phase="rcpt")
    else:
        klass = parsed[0]
        verdict = classify_reply(550 if klass == 5 else 450, status, phase="rcpt")
    if verdict == "recipient":
        return "hard-bounce"
    if verdict in ("transient", "message"):
        return "soft-bounce"
    return "other"  # a refusal of the sender (5.7.x): our problem, never the recipient's


def _other_bounce(message: Message, own_id: str | None) -> Feedback | None:
    temporary, permanent = all_failures(message)
    kind: Kind = "hard-bounce" if permanent else "soft-bounce"
    addresses = sorted(a.decode("ascii", "replace") for a in permanent or temporary)
    addresses = [a for a in addresses if _ADDRESS.match(a)]
    if not addresses:
        return None
    subject = _header(message, "Subject") or "no subject"
    return Feedback(
        kind,
        _cut(f"non-standard bounce: {subject}"),
        addresses[0].lower(),
        original_message_id=_original_id(message, _original_headers(message)),
        message_id=own_id,
    )


def _auto_reply(message: Message) -> str | None:
    submitted = _header(message, "Auto-Submitted").strip().lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"):
        if message.get(name) is not None:
            return f"{name} header"
    if _header(message, "Precedence").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    subject = _header(message, "Subject")
    if _AUTO_SUBJECT.match(subject):
        return _cut(f"subject {subject!r}")
    return None


def _unsubscribe_token(message: Message) -> str | None:
    match = _UNSUBSCRIBE_SUBJECT.match(_header(message, "Subject"))
    return match.group(1) if match else None


# -- reading the parts -------------------------------------------------------------------------


def _part_blocks(message: Message, content_type: str) -> list[Message]:
    """The header blocks of the first part of ``content_type`` (the email package parses
    ``message/delivery-status`` into one pseudo-message per block)."""
    for part in message.walk():
        if part.get_content_type() != content_type:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return [p for p in payload if isinstance(p, Message)]
        if isinstance(payload, str):
            # A DSN whose status part is base64 or quoted-printable is not parsed into blocks.
            text = part.get_payload(decode=True)
            body = text.decode("utf-8", "replace") if isinstance(text, bytes) else payload
            return [email.message_from_string(b.strip() + "\n") for b in body.split("\n\n")]
    return []


def _first_part_headers(message: Message, content_type: str) -> Message | None:
    blocks = _part_blocks(message, content_type)
    return blocks[0] if blocks else None


def _original_headers(message: Message) -> Message | None:
    """The headers of our mail, as quoted by a report (``message/rfc822`` or
    ``text/rfc822-headers``)."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                return email.message_from_bytes(text)
    return None


def _original_id(message: Message, original: Message | None) -> str | None:
    if original is not None and original.get("Message-ID"):
        return _bare_id(str(original["Message-ID"]))
    # A home-made bounce quotes our headers in its text body.
    for part in message.walk():
        if part.get_content_maintype() == "text":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                match = _MESSAGE_ID.search(text.decode("utf-8", "replace"))
                if match:
                    return match.group(1)
    return None


def _verp(message: Message) -> str | None:
    """The VERP tag of the address the mail was delivered to: the headers a mail server adds
    on delivery first (they name the envelope recipient), then ``To``."""
    for name in ("X-Original-To", "Delivered-To", "Envelope-To", "To"):
        for value in message.get_all(name) or []:
            tag = verp_tag(str(value))
            if tag is not None:
                return tag
    return None


def _own_id(message: Message) -> str | None:
    value = _header(message, "Message-ID")
    return _bare_id(value) if value else None


def _bare_id(value: str) -> str | None:
    match = re.search(r"<[^<>\s]+>", value)
    return match.group(0) if match else None


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return "" if value is None else " ".join(str(value).split())


def _field(block: Message | None, name: str) -> str:
    return "" if block is None else _header(block, name)


def _bare(value: str) -> str | None:
    """The address of a DSN/ARF field (``rfc822; gone@example.com``) or a header."""
    _, _, value = value.rpartition(";")
    addresses = [a for _, a in getaddresses([value]) if _ADDRESS.match(a)]
    return addresses[0].lower() if addresses else None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
