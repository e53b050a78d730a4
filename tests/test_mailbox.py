"""`crm-worker mailbox` against a real IMAP server (Dovecot): every kind of feedback mail is
acted on and filed in its folder, and nothing is deleted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from imap_tools import MailBoxUnencrypted

from tests import feedback_samples as samples
from tests.imap_server import ImapServer, dovecot, dovecot_binary
from tests.test_cli import base_env, crm_worker
from worker.constants import FEEDBACK_FOLDERS
from worker.delivery.mailbox import FeedbackMailbox, feedback_mailbox
from worker.localtime import utc_now
from worker.messages.unsubscribe import sign
from worker.records.delivery_log import DeliveryLog, LogEntry
from worker.records.suppression import SuppressionList
from worker.runtime import Runtime

USER_UNKNOWN = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"
SECRET = "a-secret-for-the-mailbox-tests"


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    if dovecot_binary() is None:
        pytest.skip(
            "dovecot not found: `apt-get install dovecot-imapd` (the mailbox tests need it)"
        )
    with dovecot() as server:
        yield server


def mailbox_env(server: ImapServer, **extra: str) -> dict[str, str]:
    return {
        "CRM_MAILBOX_HOST": server.host,
        "CRM_MAILBOX_PORT": str(server.port),
        "CRM_MAILBOX_TLS": "none",
        "CRM_MAILBOX_USER": server.user,
        "CRM_MAILBOX_PASSWORD": server.password,
        "CRM_UNSUBSCRIBE_SECRET": SECRET,
    } | extra


@pytest.fixture
def runtime(imap: ImapServer, make_runtime: Any, make_settings: Any) -> Runtime:
    built: Runtime = make_runtime(make_settings(**mailbox_env(imap)))
    return built


def reader(runtime: Runtime) -> FeedbackMailbox:
    return feedback_mailbox(
        runtime.settings,
        client=runtime.redis,
        suppression=runtime.suppression,
        unsubscriber=runtime.unsubscriber,
        delivery_log=runtime.delivery_log,
    )


def deliver(server: ImapServer, *mails: bytes) -> None:
    with MailBoxUnencrypted(server.host, server.port).login(server.user, server.password) as box:
        for mail in mails:
            box.append(mail, "INBOX")


def contents(server: ImapServer) -> dict[str, list[str]]:
    """Every folder and the subjects of the mails in it (read without marking them seen)."""
    found: dict[str, list[str]] = {}
    with MailBoxUnencrypted(server.host, server.port).login(server.user, server.password) as box:
        for folder in box.folder.list():
            if "\\Noselect" in folder.flags:
                continue
            box.folder.set(folder.name)
            found[folder.name] = sorted(m.subject for m in box.fetch(mark_seen=False))
    return found


def token_of(runtime: Runtime, address: str) -> str:
    mailto = runtime.unsubscriber.links(address).mailto
    return mailto.rpartition("subject=unsubscribe%20")[2]


def test_each_mail_is_acted_on_and_filed_and_none_is_deleted(imap, runtime):
    genuine = token_of(runtime, "Jo@Example.org")
    forged = token_of(runtime, "victim@example.org")[:-4] + "AAAA"
    malformed = [raw for name, raw in samples.MALFORMED.items() if raw]  # IMAP stores no 0 bytes
    deliver(
        imap,
        samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN),
        samples.dsn("full@example.net", "4.2.2", "452 4.2.2 Mailbox full"),
        samples.arf("angry@example.net"),
        samples.qmail_bounce("nobody@example.org"),
        samples.mailto_unsubscribe("jo@example.org", genuine),
        samples.mailto_unsubscribe("someone@example.org", forged),
        samples.vacation("away@example.org"),
        samples.personal("jo@example.org"),
        *malformed,
    )

    result = reader(runtime).run_pass(utc_now())

    assert dict(result.counts) == {
        "bounced": 2,
        "soft-bounce": 1,
        "complaint": 1,
        "unsubscribed": 1,
        "auto-reply": 1,
        "other": 2 + len(malformed),
    }
    folders = contents(imap)
    assert folders["INBOX"] == []
    assert folders["crm/bounced"] == ["Undelivered Mail Returned to Sender", "failure notice"]
    assert folders["crm/soft-bounce"] == ["Undelivered Mail Returned to Sender"]
    assert folders["crm/complaint"] == ["FW: Happy birthday, Jo!"]
    assert folders["crm/unsubscribed"] == [f"unsubscribe {genuine}"]
    assert folders["crm/auto-reply"] == ["Out of office: Happy birthday, Jo!"]
    assert f"unsubscribe {forged}" in folders["crm/other"]
    assert "Re: Happy birthday, Jo!" in folders["crm/other"]
    assert sum(len(mails) for mails in folders.values()) == 8 + len(malformed)

    suppression = runtime.suppression
    gone = suppression.entry("gone@example.net")
    assert gone is not None and gone.scope == "all" and "5.1.1" in gone.reason
    angry = suppression.entry("angry@example.net")
    assert angry is not None and angry.scope == "all" and "complaint (abuse)" in angry.reason
    nobody = suppression.entry("nobody@example.org")
    assert nobody is not None and nobody.scope == "all"
    jo = suppression.entry("jo@example.org")
    assert jo is not None and jo.scope == "marketing"
    assert suppression.reason("jo@example.org", marketing=False) is None  # service mail still
    assert suppression.entry("full@example.net") is None  # one soft bounce is not enough
    assert suppression.entry("victim@example.org") is None
    assert suppression.entry("someone@example.org") is None
    assert len(suppression) == 4


def test_a_second_pass_finds_nothing_new_and_moves_nothing(imap, runtime):
    deliver(imap, samples.vacation("away@example.org"))
    mailbox = reader(runtime)
    mailbox.run_pass(utc_now())

    again = mailbox.run_pass(utc_now())

    assert sum(again.counts.values()) == 0
    assert contents(imap)["crm/auto-reply"] == ["Out of office: Happy birthday, Jo!"]


def test_soft_bounces_suppress_the_address_after_the_limit_within_the_window(
    imap, make_runtime, make_settings
):
    runtime = make_runtime(make_settings(**mailbox_env(imap, CRM_MAILBOX_SOFT_BOUNCE_LIMIT="2")))
    mailbox = reader(runtime)
    full = "452 4.2.2 Mailbox full"
    first = samples.dsn("full@example.net", "4.2.2", full, number=1)
    now = utc_now()

    deliver(imap, first)
    mailbox.run_pass(now)
    deliver(imap, first)  # the same bounce read again counts once
    mailbox.run_pass(now + timedelta(minutes=1))
    assert runtime.suppression.entry("full@example.net") is None

    deliver(imap, samples.dsn("full@example.net", "4.2.2", full, number=2))
    mailbox.run_pass(now + timedelta(days=1))

    entry = runtime.suppression.entry("full@example.net")
    assert entry is not None and entry.scope == "all"
    assert entry.reason.startswith("2 soft bounces")
    assert len(contents(imap)["crm/soft-bounce"]) == 3


def test_soft_bounces_older_than_the_window_do_not_count(imap, make_runtime, make_settings):
    runtime = make_runtime(
        make_settings(
            **mailbox_env(imap, CRM_MAILBOX_SOFT_BOUNCE_LIMIT="2", CRM_MAILBOX_SOFT_BOUNCE_DAYS="7")
        )
    )
    mailbox = reader(runtime)
    full = "452 4.2.2 Mailbox full"
    now = utc_now()
    deliver(imap, samples.dsn("full@example.net", "4.2.2", full, number=1))
    mailbox.run_pass(now - timedelta(days=8))
    deliver(imap, samples.dsn("full@example.net", "4.2.2", full, number=2))
    mailbox.run_pass(now)

    assert runtime.suppression.entry("full@example.net") is None


def test_a_bounce_of_our_mail_is_logged_after_sent_and_names_the_delivery(imap, runtime):
    sent_at = utc_now() - timedelta(hours=1)
    runtime.delivery_log.record(
        LogEntry(
            at=sent_at,
            status="sent",
            rule="birthday-greeting",
            key=samples.DELIVERY_KEY,
            channel="email",
            recipient="gone@example.net",
        )
    )
    deliver(imap, samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN))

    reader(runtime).run_pass(utc_now())

    entries = [e for e in runtime.delivery_log.read() if e.key == samples.DELIVERY_KEY]
    assert [e.status for e in entries] == ["sent", "bounced"]
    assert entries[1].recipient == "gone@example.net"
    assert "5.1.1" in entries[1].reason
    suppressed = runtime.suppression.entry("gone@example.net")
    assert suppressed is not None and suppressed.key == samples.DELIVERY_KEY


def test_a_mailto_unsubscribe_never_narrows_a_bounce(imap, runtime):
    runtime.suppression.add("jo@example.org", "bounce: 5.1.1", now=utc_now())
    deliver(imap, samples.mailto_unsubscribe("jo@example.org", token_of(runtime, "jo@example.org")))

    reader(runtime).run_pass(utc_now())

    entry = runtime.suppression.entry("jo@example.org")
    assert entry is not None and entry.scope == "all"


def test_a_mail_too_large_to_read_is_filed_as_other_unread(imap, runtime):
    huge = b"From: big@example.org\r\nSubject: photos\r\n\r\n" + b"x" * (3 * 1024 * 1024)
    deliver(imap, huge, samples.vacation("away@example.org"))

    result = reader(runtime).run_pass(utc_now())

    big = [h for h in result.handled if h.folder == "other"]
    assert len(big) == 1 and big[0].detail.startswith("too large to read")
    assert contents(imap)["crm/other"] == ["photos"]
    assert result.counts["auto-reply"] == 1


def test_the_command_files_the_mail_and_prints_a_summary(imap, tmp_path, redis_client):
    deliver(imap, samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN), samples.personal("x@y.z"))
    env = base_env(tmp_path) | mailbox_env(imap)

    done = crm_worker("mailbox", "--once", env=env, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "detector" not in done.stderr  # one line per mail, not one per bounce heuristic
    assert "mailbox: 2 mails handled: unsubscribed 0, bounced 1" in done.stdout
    assert "other 1" in done.stdout
    assert set(FEEDBACK_FOLDERS) <= {name.removeprefix("crm/") for name in contents(imap)}


def test_the_command_says_when_the_mailbox_cannot_be_reached(imap, tmp_path, redis_client):
    env = base_env(tmp_path) | mailbox_env(imap, CRM_MAILBOX_PASSWORD="wrong")
    refused = crm_worker("mailbox", "--once", env=env, cwd=tmp_path)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "cannot be read" in refused.stderr
    assert "wrong" not in refused.stderr and imap.password not in refused.stderr

    unset = crm_worker("mailbox", "--once", env=base_env(tmp_path), cwd=tmp_path)
    assert unset.returncode == 2
    assert "CRM_MAILBOX_HOST" in unset.stderr


def test_the_report_shows_a_bounced_delivery_as_bounced(imap, tmp_path, redis_client):
    DeliveryLog(redis_client).record(
        LogEntry(
            at=utc_now() - timedelta(hours=1),
            status="sent",
            rule="birthday-greeting",
            key=samples.DELIVERY_KEY,
            channel="email",
            recipient="gone@example.net",
        )
    )
    deliver(imap, samples.dsn("gone@example.net", "5.1.1", USER_UNKNOWN))
    env = base_env(tmp_path) | mailbox_env(imap)
    assert crm_worker("mailbox", "--once", env=env, cwd=tmp_path).returncode == 0

    report = crm_worker("report", "--json", env=env, cwd=tmp_path)
    table = crm_worker("report", env=env, cwd=tmp_path)

    lines = [json.loads(line) for line in report.stdout.splitlines()]
    counts = {(x["rule"], x["status"]): x["count"] for x in lines if x["kind"] == "count"}
    assert counts == {("birthday-greeting", "bounced"): 1}
    assert "bounced" in table.stdout


def test_a_token_of_older_mail_unsubscribes_the_address_that_wrote(imap, runtime):
    old_token = sign(SECRET.encode(), "42", "email")  # format 1: a customer id, no address
    deliver(imap, samples.mailto_unsubscribe("Jo <jo@example.org>", old_token))

    result = reader(runtime).run_pass(utc_now())

    assert result.counts["unsubscribed"] == 1
    entry = runtime.suppression.entry("jo@example.org")
    assert entry is not None and entry.scope == "marketing"


def test_the_polling_command_files_new_mail_and_stops_on_sigterm(imap, tmp_path, redis_client):
    env = base_env(tmp_path) | mailbox_env(imap, CRM_MAILBOX_POLL_S="0.2")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | env
    process = subprocess.Popen(
        [sys.executable, "-c", "from worker.cli import main; main()", "mailbox"],
        env=full_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deliver(imap, samples.arf("angry@example.net"))
        deadline = time.monotonic() + 30
        suppression = SuppressionList(redis_client)
        while suppression.entry("angry@example.net") is None:
            assert time.monotonic() < deadline, "the complaint was not handled within 30 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "complaint 1" in out
    assert contents(imap)["crm/complaint"] == ["FW: Happy birthday, Jo!"]
