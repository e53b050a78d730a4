"""The planning screens (worker.planning.triggers.screen_value, applied to records and to raw CSV
text) never drop a due occurrence or a skip: a pass with them finds exactly what evaluating every
record against every rule finds — table-driven around Feb 29, Dec 31/Jan 1 in far-apart zones,
DST days and the exact grace boundary."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker.planning.plan import PlannedDelivery, Related, plan, plan_subject
from worker.rules import RuleCatalog
from worker.sources.csv import CsvSource

RULES = {
    "birthday": "trigger: {birthday: {field: customer.birthday, at: '09:00', feb29: feb28}}",
    "anniversary": (
        "trigger: {anniversary: {field: purchase.purchased_at, at: '10:00', feb29: mar1}}"
    ),
    "after-at": (
        "trigger: {after: {field: purchase.delivered_at, delay: 7d, at: '10:00'}}\n"
        "send_window: {from: '08:00', to: '20:00'}"
    ),
    "after-plain": "trigger: {after: {field: purchase.delivered_at, delay: 2d}}",
}
ZONES = [
    "Pacific/Kiritimati",  # UTC+14
    "Pacific/Pago_Pago",  # UTC-11
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # half-hour DST shift
    "",  # the default zone
    "Not/AZone",  # unknown: the default zone
]
NOWS = [
    "2026-02-28T12:00:00+00:00",  # Feb 29 moves to Feb 28 (birthday) or Mar 1 (anniversary)
    "2026-03-01T00:30:00+00:00",
    "2028-02-29T10:00:00+00:00",  # a leap year's own Feb 29
    "2026-12-31T23:00:00+00:00",  # already Jan 1 at UTC+14, still Dec 31 at UTC-11
    "2027-01-01T10:00:00+00:00",
    "2026-03-29T01:30:00+00:00",  # Europe's spring DST
    "2026-03-08T07:00:00+00:00",  # North America's spring DST
    "2026-11-01T06:00:00+00:00",  # North America's autumn DST
]


def _texts(instant: datetime) -> list[str]:
    """``instant`` as a CRM may write it: UTC, far-apart offsets, a bare date."""
    return [
        instant.strftime("%Y-%m-%dT%H:%M:%SZ"),
        instant.astimezone(ZoneInfo("Pacific/Kiritimati")).isoformat(),
        instant.astimezone(ZoneInfo("Pacific/Pago_Pago")).isoformat(),
        instant.date().isoformat(),
    ]


def _write_crm(folder: Path, now: datetime) -> None:
    folder.mkdir()
    customers = [["id", "email", "birthday", "timezone", "email_opt_in"]]
    birthdays = ["2000-02-29", "1990-12-31", "1990-01-01", "1988-03-01", "1990-02-28", ""]
    birthdays += [
        (now + timedelta(days=d)).replace(year=1992).date().isoformat() for d in (-1, 0)
    ]  # leap
    birthdays += ["1990-13-01", "not a date"]
    for n, zone in enumerate(ZONES):
        for m, birthday in enumerate(birthdays):
            cid = f"c{n}-{m}"
            customers.append([cid, f"{cid}@example.com", birthday, zone, "true"])
    purchases = [["id", "customer_id", "purchased_at", "delivered_at"]]
    hours = range(-80, 81, 7)  # around each candidate due time, in both directions
    around = [now - timedelta(days=365, hours=h) for h in hours]
    around += [now - timedelta(days=366, hours=h) for h in hours]  # across a Feb 29
    around += [now - timedelta(days=7, hours=h) for h in hours]
    # after-plain (2d, grace 1d): due exactly at the window's end (in), at its start (out),
    # and one second inside each bound.
    for edge in (timedelta(0), timedelta(days=1), timedelta(seconds=1)):
        around.append(now - timedelta(days=2) - edge)
    around.append(now - timedelta(days=3) + timedelta(seconds=1))
    texts = [text for instant in around for text in _texts(instant)]
    texts += ["", "2025-02-30T10:00:00Z", "yesterday"]
    for n, text in enumerate(texts):
        owner = f"c{n % len(ZONES)}-0"
        purchases.append([f"p{n}", owner, text, text])
    for name, rows in (("customers", customers), ("purchases", purchases)):
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(rows)


def _catalog(folder: Path) -> RuleCatalog:
    folder.mkdir()
    for rule_id, trigger in RULES.items():
        (folder / f"{rule_id}.yaml").write_text(
            f"id: {rule_id}\n{trigger}\ngrace: 1d\n"
            "send: [{channel: email, template: birthday, to: customer.email}]\n",
            encoding="utf-8",
        )
    catalog = RuleCatalog(folder)
    assert catalog.refresh() == []
    return catalog


def _summary(items: list[object]) -> list[tuple[object, ...]]:
    return [
        ("due", item.key, item.due_at, item.to)
        if isinstance(item, PlannedDelivery)
        else ("skip", item.rule_id, item.record_id, item.reason)  # type: ignore[attr-defined]
        for item in items
    ]


@pytest.mark.parametrize("now_text", NOWS)
def test_screened_pass_finds_what_evaluating_every_record_finds(tmp_path, now_text):
    now = datetime.fromisoformat(now_text).astimezone(UTC)
    _write_crm(tmp_path / "crm", now)
    catalog = _catalog(tmp_path / "rules")
    source = CsvSource(tmp_path / "crm")
    zone = ZoneInfo("UTC")
    company = {"name": "Acme"}

    unscreened = [
        item
        for rule in catalog
        for record in source.iter_records(rule.trigger.spec.entity)
        for item in plan_subject(
            rule, Related(rule, record, source), now, default_zone=zone, company=company
        )
    ]
    screened = list(plan(catalog, source, now, default_zone=zone, company=company))

    assert _summary(screened) == _summary(unscreened)
    due = {item.rule_id for item in unscreened if isinstance(item, PlannedDelivery)}
    assert {"anniversary", "after-at", "after-plain"} <= due  # the grid reaches every rule
    skipped = {item.rule_id for item in unscreened if not isinstance(item, PlannedDelivery)}
    assert {"birthday", "anniversary", "after-plain"} <= skipped  # and the unusable dates


def test_exact_grace_boundary_is_kept(tmp_path):
    """after-plain's window is (now - 1d, now]: due at now is planned, due at now - 1d not."""
    now = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    _write_crm(tmp_path / "crm", now)
    catalog = _catalog(tmp_path / "rules")
    source = CsvSource(tmp_path / "crm")
    found = list(plan(catalog, source, now, default_zone=ZoneInfo("UTC"), company={}))
    due = {item.due_at for item in found if isinstance(item, PlannedDelivery)}
    assert now in due
    assert now - timedelta(days=1) + timedelta(seconds=1) in due
    assert now - timedelta(days=1) not in due


UNRESOLVED = (
    "id: unresolved\n"
    "trigger: {unresolved: {field: complaint.opened_at, resolved: complaint.resolved_at,"
    " after: 2d, every: 3d, times: 3}}\n"
    "send_window: {from: '08:00', to: '20:00'}\ngrace: 1d\n"
    "send: [{channel: email, template: birthday, to: customer.email}]\n"
)


@pytest.mark.parametrize("now_text", NOWS)
def test_unresolved_screen_finds_what_evaluating_every_complaint_finds(tmp_path, now_text):
    """The follow-up screen lets every complaint through that has a follow-up or a skip
    (opened around each follow-up's due time, in far-apart zones, resolved or not)."""
    now = datetime.fromisoformat(now_text).astimezone(UTC)
    _write_crm(tmp_path / "crm", now)
    rows = [["id", "customer_id", "opened_at", "resolved_at"]]
    around = [
        now - timedelta(days=days, hours=h) for days in (2, 5, 8, 11) for h in range(-60, 61, 7)
    ]
    texts = [text for instant in around for text in _texts(instant)]
    texts += ["", "2025-02-30T10:00:00Z", "yesterday"]
    for n, text in enumerate(texts):
        resolved = ["", now.isoformat(), (now - timedelta(days=1)).isoformat(), "garbage"][n % 4]
        rows.append([f"k{n}", f"c{n % len(ZONES)}-0", text, resolved])
    with (tmp_path / "crm" / "complaints.csv").open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(rows)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "unresolved.yaml").write_text(UNRESOLVED, encoding="utf-8")
    catalog = RuleCatalog(tmp_path / "rules")
    assert catalog.refresh() == []
    source = CsvSource(tmp_path / "crm")
    zone, company = ZoneInfo("UTC"), {"name": "Acme"}
    rule = catalog.get("unresolved")
    assert rule is not None
    unscreened = [
        item
        for record in source.iter_records("complaint")
        for item in plan_subject(
            rule, Related(rule, record, source), now, default_zone=zone, company=company
        )
    ]
    screened = list(plan(catalog, source, now, default_zone=zone, company=company))

    assert _summary(screened) == _summary(unscreened)
    assert any(isinstance(item, PlannedDelivery) for item in unscreened)
    assert any(not isinstance(item, PlannedDelivery) for item in unscreened)
