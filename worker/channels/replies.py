"""What an SMTP reply means for a delivery: pure classification by reply code, enhanced status
code (RFC 3463) and the step of the SMTP dialogue it answered.

Five verdicts, each with its own consequence in :mod:`worker.delivery.outcome`:

* ``transient`` — 4xx (greylisting, 421 shutting down, 452 full), a refused or lost connection
  before the message was handed over, a timeout: retry with backoff within the rule's grace.
* ``recipient`` — the address is bad (5.1.x, 5.2.1 disabled, a bare 550/551/553 to RCPT):
  failed, never retried, the address goes to the suppression list.
* ``message`` — a permanent refusal of this message that says nothing about the address (5.2.2
  mailbox full, 5.3.x, 5.6.x content): failed, not retried, not suppressed.
* ``sender`` — *our* problem: authentication (530, 534, 535, 538), policy or reputation (5.7.x,
  e.g. Gmail's ``550 5.7.1`` for a missing Message-ID), a bad sender address (5.1.7, 5.1.8), a
  5xx to MAIL FROM or at the greeting: never suppress the recipient; pause sending and alert.
* ``unknown`` — the connection died after DATA was accepted (the final "." may have arrived and
  the server may have queued the message): recorded as ``unknown``, not resent automatically.

Recipients are judged one by one: each message has one recipient and the channel sends RCPT on
its own, so a refusal is that recipient's reply, never a partial result of several.

Example::

    >>> classify(550, "5.1.1 <x@example.com>: user unknown", phase="rcpt")
    'recipient'
    >>> classify(550, "5.7.1 Missing Message-ID", phase="data")
    'sender'
    >>> classify(None, "SMTPServerDisconnected", phase="data")
    'unknown'
"""

from __future__ import annotations

import re
from typing import Literal

from worker.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SenderRejectedError,
    TransientDeliveryError,
    UncertainDeliveryError,
)

Verdict = Literal["transient", "recipient", "message", "sender", "unknown"]
#: The step of the SMTP dialogue a reply answered: the greeting/EHLO/AUTH, MAIL FROM, RCPT TO,
#: or DATA (from the DATA command to the reply after the final ".").
Phase = Literal["connect", "mail", "rcpt", "data"]

#: Authentication required / too weak / failed / encryption required (RFC 4954).
AUTH_CODES = frozenset({530, 534, 535, 538})
#: Bare RCPT replies that mean "no such mailbox" (RFC 5321 4.2.3).
RECIPIENT_CODES = frozenset({550, 551, 553})
#: 5.1.7 / 5.1.8: our own sender address is bad, not the recipient's.
SENDER_ADDRESS_DETAILS = frozenset({7, 8})

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")


def enhanced_status(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 status code at the start of a reply text (``5.1.1 user unknown``)."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    klass, subject, detail = (int(g) for g in match.groups())
    return klass, subject, detail


def classify(code: int | None, text: str, *, phase: Phase) -> Verdict:
    """The verdict for a reply ``code`` (``None``: no reply, the connection was lost or timed
    out) with reply ``text``, received at ``phase``. See the module docstring."""
    if code is None:
        return "unknown" if phase == "data" else "transient"
    if code in AUTH_CODES:
        return "sender"
    if code < 500:
        return "transient"
    status = enhanced_status(text)
    if status is not None:
        _, subject, detail = status
        if subject == 7 or (subject == 1 and detail in SENDER_ADDRESS_DETAILS):
            return "sender"
        if subject == 1 or (subject, detail) == (2, 1):
            return "recipient"
        if phase in ("connect", "mail"):
            return "sender"
        return "message"
    if phase in ("connect", "mail"):
        return "sender"
    if phase == "rcpt" and code in RECIPIENT_CODES:
        return "recipient"
    return "message"


def delivery_error(verdict: Verdict, what: str, *, code: int | None, reply: str) -> DeliveryError:
    """The :mod:`worker.errors` exception a channel raises for ``verdict``."""
    kinds: dict[Verdict, type[DeliveryError]] = {
        "transient": TransientDeliveryError,
        "recipient": RecipientRejectedError,
        "message": PermanentDeliveryError,
        "sender": SenderRejectedError,
        "unknown": UncertainDeliveryError,
    }
    return kinds[verdict](what, code=code, reply=reply)
