"""The walking skeleton: rules → scheduler → Dramatiq/Redis → render → a real SMTP server."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from worker.localtime import parse_instant
from worker.planning.plan import PlannedDelivery, plan

NOW = parse_instant("2026-03-14T10:00:00Z")


def planned(runtime, now: datetime = NOW) -> list[PlannedDelivery]:
    items = plan(
        runtime.catalog,
        runtime.source,
        now,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    )
    return [i for i in items if isinstance(i, PlannedDelivery)]


def test_run_once_delivers_exactly_the_plan_once(make_runtime, make_settings, smtp_server):
    settings = make_settings(
        CRM_SMTP_HOST=smtp_server.host,
        CRM_SMTP_PORT=str(smtp_server.port),
        CRM_SMTP_SECURITY="none",
    )
    runtime = make_runtime(settings)
    expected = planned(runtime)
    assert len(expected) >= 3

    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"sent": len(expected)})
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(p.to for p in expected)
    assert all(len(r.recipients) == 1 for r in smtp_server.received)
    assert all(r.sender == "crm@shop.example.com" for r in smtp_server.received)

    # Replaying the same instant, and a later one the same day, sends nothing more.
    again = runtime.run_once(NOW)
    later = runtime.run_once(parse_instant("2026-03-14T11:00:00Z"))
    assert again.report.queued == [] and again.report.already_claimed == len(expected)
    assert later.report.queued == []
    assert len(smtp_server.received) == len(expected)
    assert len(set(smtp_server.message_ids())) == len(expected)


def test_messages_are_in_the_customers_language_with_both_parts(
    make_runtime, make_settings, smtp_server, tmp_path
):
    import shutil

    from tests.conftest import REPO

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "birthday-greeting.yaml", rules)
    settings = make_settings(
        CRM_RULES_DIR=str(rules),
        CRM_SMTP_HOST=smtp_server.host,
        CRM_SMTP_PORT=str(smtp_server.port),
        CRM_SMTP_SECURITY="none",
    )
    runtime = make_runtime(settings)
    by_address = {p.to: p for p in planned(runtime)}
    runtime.run_once(NOW)
    greetings = {
        "de": "Alles Gute zum Geburtstag",
        "es": "Feliz cumpleaños",
        "en": "Happy birthday",
    }
    seen_languages = set()
    for received in smtp_server.received:
        message = received.message
        plan_item = by_address[received.recipients[0]]
        language = (plan_item.locale or "en")[:2]
        seen_languages.add(language)
        assert greetings[language] in message["Subject"]
        assert message["Message-ID"].endswith("@shop.example.com>")
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["Date"]
        parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
        assert set(parts) == {"text/plain", "text/html"}
        assert greetings[language].split()[-1].lower() in parts["text/plain"].lower()
        assert "<html" in parts["text/html"]
        assert "None" not in parts["text/plain"]
    assert len(seen_languages) >= 2


def test_outbox_when_no_smtp_host(make_runtime, make_settings, tmp_path):
    runtime = make_runtime(make_settings(CRM_OUTBOX_DIR=str(tmp_path / "outbox")))
    expected = planned(runtime)
    summary = runtime.run_once(NOW)
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert summary.states["sent"] == len(expected) == len(files)
    assert b"Message-ID: <" in files[0].read_bytes()
    assert b"\r\n" in files[0].read_bytes()


def test_opted_out_after_enqueue_is_skipped_at_send_time(make_runtime, make_settings, tmp_path):
    import shutil

    from tests.conftest import REPO

    crm = tmp_path / "crm"
    shutil.copytree(REPO / "examples" / "crm", crm)
    runtime = make_runtime(make_settings(CRM_SOURCE=str(crm)))
    first = planned(runtime)[0]
    # The scheduler claims and queues, but no worker runs yet.
    report = runtime.scheduler.run_pass(NOW)
    assert first.key in report.queued
    # The customer opts out in the CRM before the worker gets to the message.
    lines = (crm / "customers.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    record_id = first.occurrence.record_id
    lines = [
        line.replace(",true,", ",false,") if line.startswith(f"{record_id},") else line
        for line in lines
    ]
    (crm / "customers.csv").write_text("".join(lines), encoding="utf-8")
    worker = runtime.start_worker()
    try:
        states = runtime.wait_for(report.queued, timeout_s=30)
    finally:
        worker.stop()
    assert states[first.key] == "skipped"
    assert "condition is false" in runtime.ledger.get(first.key)["reason"]
    assert Counter(states.values())["sent"] == len(report.queued) - 1


def test_replayed_day_is_not_too_late(make_runtime, make_settings):
    # A replay of a past instant is judged against that instant, not the wall clock.
    runtime = make_runtime(make_settings())
    summary = runtime.run_once(datetime(2025, 7, 1, 12, tzinfo=UTC))
    assert summary.states["sent"] == len(summary.report.queued) > 0
