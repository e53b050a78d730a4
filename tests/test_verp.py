"""VERP: with CRM_VERP_ADDRESS, each mail's envelope sender names its delivery
(``bounces+<digest>@…``), so a bounce that quotes nothing of our mail still ties to it: the
suppression entry names the delivery and the delivery log shows ``bounced`` after ``sent``.
Mail really goes to the test SMTP server; the bounce is a real DSN's bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import feedback_samples as samples
from tests.test_unsubscribe_pages import SECRET, write_shop
from worker.delivery.feedback import classify
from worker.delivery.mailbox import FeedbackActions, SoftBounces
from worker.errors import ConfigError
from worker.localtime import utc_now
from worker.messages.mail import key_digest, verp_sender, verp_tag
from worker.settings import load_settings

BOUNCES = "bounces@shop.example.com"
BIRTHDAY_DAY = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


@pytest.fixture
def shop(tmp_path: Path, make_runtime, make_settings, smtp_env):  # type: ignore[no-untyped-def]
    crm, rules = write_shop(tmp_path)

    def build(**settings: str):  # type: ignore[no-untyped-def]
        return make_runtime(
            make_settings(
                CRM_SOURCE=str(crm),
                CRM_RULES_DIR=str(rules),
                CRM_UNSUBSCRIBE_SECRET=SECRET,
                **smtp_env,
                **settings,
            )
        )

    return build


def _sent_keys(runtime) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {e.recipient: e.key for e in runtime.delivery_log.read() if e.status == "sent"}


def test_each_mail_is_sent_from_its_own_bounce_address(shop, smtp_server):
    runtime = shop(CRM_VERP_ADDRESS=BOUNCES)
    runtime.run_once(BIRTHDAY_DAY)
    keys = _sent_keys(runtime)
    assert set(keys) == {"ana@example.com", "bob@example.com"}
    for received in smtp_server.received:
        key = keys[received.recipients[0]]
        assert received.sender == f"bounces+{key_digest(key)}@shop.example.com"
        # The tag is the left part of the Message-ID: both name the same delivery.
        assert received.message["Message-ID"] == f"<{key_digest(key)}@shop.example.com>"
        assert received.message["From"] == "Example Shop <crm@shop.example.com>"


def test_without_verp_the_envelope_sender_is_the_from_address(shop, smtp_server):
    shop().run_once(BIRTHDAY_DAY)
    assert {r.sender for r in smtp_server.received} == {"crm@shop.example.com"}


def _verp_dsn(rcpt: str, bounce_address: str) -> bytes:
    """A DSN as a relay sends it to a VERP address: no part quoting our mail, so no
    Message-ID to go by; the envelope recipient shows in Delivered-To and To."""
    raw = samples.dsn(rcpt, "5.1.1", f"550 5.1.1 <{rcpt}>: user unknown").decode()
    quoted = raw.index("--4QX1.1733389205/mx.shop.example.com\r\nContent-Description: Undelivered")
    raw = raw[:quoted] + "--4QX1.1733389205/mx.shop.example.com--\r\n"
    raw = raw.replace("To: crm@shop.example.com", f"To: {bounce_address}")
    return f"Delivered-To: {bounce_address}\r\n{raw}".encode()


def test_a_bounce_that_quotes_nothing_ties_to_its_delivery_by_its_address(shop, smtp_server):
    runtime = shop(CRM_VERP_ADDRESS=BOUNCES)
    runtime.run_once(BIRTHDAY_DAY)
    key = _sent_keys(runtime)["bob@example.com"]
    (to_bob,) = [r for r in smtp_server.received if r.recipients == ["bob@example.com"]]
    feedback = classify(_verp_dsn("bob@example.com", to_bob.sender))
    assert feedback.kind == "hard-bounce" and feedback.original_message_id is None
    assert feedback.verp == key_digest(key)

    actions = FeedbackActions(
        suppression=runtime.suppression,
        unsubscriber=runtime.unsubscriber,
        soft_bounces=SoftBounces(runtime.redis, window=timedelta(days=14)),
        delivery_log=runtime.delivery_log,
        soft_bounce_limit=3,
    )
    folder, _ = actions.act(feedback, now=utc_now())
    assert folder == "bounced"
    entry = runtime.suppression.entry("bob@example.com")
    assert entry is not None and entry.key == key and entry.scope == "all"
    log = [(e.status, e.key) for e in runtime.delivery_log.read() if e.key == key]
    assert log == [("sent", key), ("bounced", key)]


def test_the_same_bounce_without_verp_is_suppressed_but_names_no_delivery(shop, smtp_server):
    runtime = shop()
    runtime.run_once(BIRTHDAY_DAY)
    feedback = classify(_verp_dsn("bob@example.com", "crm@shop.example.com"))
    assert feedback.verp is None
    actions = FeedbackActions(
        suppression=runtime.suppression,
        unsubscriber=runtime.unsubscriber,
        soft_bounces=SoftBounces(runtime.redis, window=timedelta(days=14)),
        delivery_log=runtime.delivery_log,
        soft_bounce_limit=3,
    )
    actions.act(feedback, now=utc_now())
    entry = runtime.suppression.entry("bob@example.com")
    assert entry is not None and entry.key == ""
    assert [e.status for e in runtime.delivery_log.read()] == ["sent", "sent"]


@pytest.mark.parametrize(
    ("headers", "tag"),
    [
        ("X-Original-To: bounces+{d}@shop.example.com\r\nTo: x@y.example", "{d}"),
        ("Delivered-To: bounces+{D}@shop.example.com\r\n", "{d}"),  # upper case hex too
        ("To: Bounces <bounces+{d}@shop.example.com>\r\n", "{d}"),
        ("To: bounces@shop.example.com\r\n", None),
        ("To: bounces+notadigest@shop.example.com\r\n", None),
        ("To: bounces+{d}0@shop.example.com\r\n", None),  # 33 digits: not ours
    ],
)
def test_the_verp_tag_is_read_from_the_delivery_headers(headers, tag):
    digest = key_digest("birthday:customer:1:2026/email")
    raw = (
        headers.format(d=digest, D=digest.upper()).removesuffix("\r\n")
        + "\r\nFrom: MAILER-DAEMON@mx.example.net\r\nSubject: hello\r\n\r\nbody\r\n"
    ).encode()
    assert classify(raw).verp == (tag.format(d=digest) if tag else None)


def test_verp_sender_and_tag_round_trip():
    key = "birthday:customer:1:2026/email"
    address = verp_sender(BOUNCES, key)
    assert address == f"bounces+{key_digest(key)}@shop.example.com"
    assert len(address.partition("@")[0]) <= 64  # RFC 5321 local-part limit
    assert verp_tag(address) == key_digest(key)


@pytest.mark.parametrize(
    "value",
    ["bounces+x@shop.example.com", "Bounces <bounces@shop.example.com>", "bounces", "b@localhost"],
)
def test_a_verp_address_that_cannot_carry_a_tag_is_refused_at_start(value):
    with pytest.raises(ConfigError, match="CRM_VERP_ADDRESS"):
        load_settings({"CRM_VERP_ADDRESS": value})
