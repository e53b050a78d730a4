"""Reply classification: every SMTP reply a relay may give, and what it means for delivery."""

from __future__ import annotations

import pytest

from worker.channels.replies import classify, delivery_error, enhanced_status
from worker.errors import (
    PermanentDeliveryError,
    RecipientRejectedError,
    SenderRejectedError,
    TransientDeliveryError,
    UncertainDeliveryError,
)


@pytest.mark.parametrize(
    ("code", "text", "phase", "verdict"),
    [
        # Temporary: retry later.
        (451, "4.7.1 Greylisted, try again in 5 minutes", "rcpt", "transient"),
        (451, "4.3.0 Temporary failure", "data", "transient"),
        (421, "4.7.0 Too many connections, closing", "connect", "transient"),
        (452, "4.2.2 Mailbox full", "rcpt", "transient"),
        (450, "Mailbox busy", "rcpt", "transient"),
        (454, "4.7.0 TLS not available", "connect", "transient"),
        (None, "SMTPConnectError", "connect", "transient"),
        (None, "SMTPServerDisconnected", "mail", "transient"),
        (None, "SMTPServerDisconnected", "rcpt", "transient"),
        # The address is bad: fail and suppress.
        (
            550,
            "5.1.1 <x@example.com>: Recipient address rejected: User unknown",
            "rcpt",
            "recipient",
        ),
        (550, "5.1.1 The email account does not exist", "data", "recipient"),
        (553, "5.1.3 Bad recipient address syntax", "rcpt", "recipient"),
        (550, "5.1.10 Null MX", "rcpt", "recipient"),
        (550, "5.2.1 Mailbox disabled", "rcpt", "recipient"),
        (550, "No such user here", "rcpt", "recipient"),
        (551, "User not local", "rcpt", "recipient"),
        # Permanent for this message, but the address is fine: fail, do not suppress.
        (552, "5.2.2 Mailbox full", "rcpt", "message"),
        (552, "5.3.4 Message too big", "data", "message"),
        (554, "5.6.0 Content rejected", "data", "message"),
        (554, "Transaction failed", "data", "message"),
        (552, "Too much mail data", "rcpt", "message"),
        # Our own problem: never suppress, pause sending.
        (550, "5.7.1 Missing Message-ID, see https://support.google.com/mail", "data", "sender"),
        (550, "5.7.1 Relaying denied", "rcpt", "sender"),
        (554, "5.7.1 Service unavailable; client host blocked", "connect", "sender"),
        (535, "5.7.8 Authentication credentials invalid", "connect", "sender"),
        (535, "Authentication failed", "connect", "sender"),
        (530, "5.7.0 Must issue a STARTTLS command first", "mail", "sender"),
        (534, "Authentication mechanism is too weak", "connect", "sender"),
        (553, "5.1.7 Bad sender address syntax", "mail", "sender"),
        (550, "5.1.8 Bad sender's system address", "rcpt", "sender"),
        (550, "Sender rejected", "mail", "sender"),
        (554, "No SMTP service here", "connect", "sender"),
        # The message may have been accepted: unknown, never resent blindly.
        (None, "SMTPServerDisconnected", "data", "unknown"),
        (None, "SMTPTimeoutError", "data", "unknown"),
    ],
)
def test_classify(code, text, phase, verdict):
    assert classify(code, text, phase=phase) == verdict


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("5.1.1 user unknown", (5, 1, 1)),
        ("  4.7.1 greylisted", (4, 7, 1)),
        ("5.1.10 null MX", (5, 1, 10)),
        ("user unknown 5.1.1", None),
        ("5.1 short", None),
        ("5.1.1000 too long", None),
        ("", None),
    ],
)
def test_enhanced_status(text, status):
    assert enhanced_status(text) == status


def test_error_kinds_keep_what_the_delivery_needs():
    sender = delivery_error("sender", "refused", code=550, reply="5.7.1 policy")
    # A sender problem is retried later (after a pause), never a permanent recipient failure.
    assert isinstance(sender, SenderRejectedError) and isinstance(sender, TransientDeliveryError)
    assert not isinstance(sender, PermanentDeliveryError)
    assert sender.code == 550 and "5.7.1" in sender.reply
    gone = delivery_error("recipient", "refused", code=550, reply="5.1.1 unknown")
    assert isinstance(gone, RecipientRejectedError) and isinstance(gone, PermanentDeliveryError)
    unknown = delivery_error("unknown", "lost", code=None, reply="")
    assert isinstance(unknown, UncertainDeliveryError)
    assert not isinstance(unknown, TransientDeliveryError | PermanentDeliveryError)
