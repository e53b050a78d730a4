"""Classification of one feedback mail: what it is, whom it concerns, which mail of ours it
answers. Pure: bytes in, a classification out."""

from __future__ import annotations

import pytest

from tests import feedback_samples as samples
from worker.delivery.feedback import MAX_REASON_CHARS, classify

USER_UNKNOWN = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"


@pytest.mark.parametrize(
    ("raw", "kind", "address"),
    [
        (samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN), "hard-bounce", "gone@example.net"),
        (
            samples.dsn("Full@Example.net", "4.2.2", "452 4.2.2 Mailbox full"),
            "soft-bounce",
            "full@example.net",
        ),
        (
            samples.dsn("full@example.net", "5.2.2", "552 5.2.2 Over quota"),
            "soft-bounce",
            "full@example.net",
        ),
        (
            samples.dsn("off@example.net", "5.2.1", "550 5.2.1 Account disabled"),
            "hard-bounce",
            "off@example.net",
        ),
        (samples.arf("angry@example.net"), "complaint", "angry@example.net"),
        (samples.qmail_bounce("nobody@example.org"), "hard-bounce", "nobody@example.org"),
        (
            samples.mailto_unsubscribe("Jo <jo@example.org>", "2.abc.def"),
            "unsubscribe",
            "jo@example.org",
        ),
        (samples.vacation("jo@example.org"), "auto-reply", None),
    ],
    ids=["dsn-5.1.1", "dsn-4.2.2", "dsn-5.2.2", "dsn-5.2.1", "arf", "qmail", "mailto", "vacation"],
)
def test_each_kind_is_recognised(raw: bytes, kind: str, address: str | None) -> None:
    feedback = classify(raw)
    assert (feedback.kind, feedback.address) == (kind, address)


@pytest.mark.parametrize(
    "raw",
    [
        samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN),
        samples.arf("angry@example.net"),
        samples.qmail_bounce("nobody@example.org"),
    ],
    ids=["dsn", "arf", "qmail"],
)
def test_a_report_names_the_message_id_of_our_mail(raw: bytes) -> None:
    assert classify(raw).original_message_id == samples.ORIGINAL_ID


def test_a_bounce_keeps_the_status_and_diagnostic_as_its_reason() -> None:
    feedback = classify(samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN))
    assert feedback.reason.startswith("5.1.1 smtp; 550 5.1.1")
    assert feedback.message_id == "<dsn-1-5.1.1@mx.shop.example.com>"


def test_a_refusal_of_the_sender_is_not_the_recipients_fault() -> None:
    feedback = classify(samples.dsn("x@example.net", "5.7.1", "550 5.7.1 Message rejected as spam"))
    assert feedback.kind == "other"
    assert "5.7.1" in feedback.reason


def test_a_delay_warning_is_not_a_bounce() -> None:
    raw = samples.dsn("slow@example.net", "4.4.1", "connect timed out", action="delayed")
    feedback = classify(raw)
    assert (feedback.kind, feedback.address) == ("other", None)


def test_the_token_of_a_mailto_unsubscribe_is_handed_over_unverified() -> None:
    feedback = classify(samples.mailto_unsubscribe("jo@example.org", "2.abc.def"))
    assert feedback.token == "2.abc.def"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (samples.personal("jo@example.org"), "not a bounce, complaint or unsubscribe"),
        (
            samples.mailto_unsubscribe("jo@example.org", "").replace(
                b"unsubscribe \r", b"unsubscribe\r"
            ),
            "unsubscribe request without a token",
        ),
    ],
    ids=["personal", "unsubscribe-without-token"],
)
def test_anything_else_is_other_with_a_reason(raw: bytes, reason: str) -> None:
    feedback = classify(raw)
    assert feedback.kind == "other"
    assert feedback.reason.startswith(reason)


@pytest.mark.parametrize("name", sorted(samples.MALFORMED))
def test_a_malformed_mail_is_other_and_never_raises(name: str) -> None:
    feedback = classify(samples.MALFORMED[name])
    assert feedback.kind == "other"
    assert feedback.address is None
    assert feedback.reason


def test_a_huge_mail_is_not_parsed() -> None:
    feedback = classify(b"Subject: x\r\n\r\n" + b"y" * 1000, max_bytes=100)
    assert feedback.kind == "other"
    assert feedback.reason.startswith("too large to read")


def test_a_reason_is_cut_to_a_readable_length() -> None:
    feedback = classify(samples.dsn("gone@example.net", "5.1.1", "550 5.1.1 " + "x" * 5000))
    assert feedback.kind == "hard-bounce"
    assert len(feedback.reason) <= MAX_REASON_CHARS


@pytest.mark.parametrize(("tls", "port"), [("tls", 993), ("starttls", 143), ("none", 143)])
def test_the_imap_port_follows_the_transport_security(make_settings, tls: str, port: int) -> None:
    settings = make_settings(CRM_MAILBOX_HOST="imap.example.com", CRM_MAILBOX_TLS=tls)
    assert settings.effective_mailbox_port == port
    assert make_settings(CRM_MAILBOX_PORT="10143").effective_mailbox_port == 10143
