"""Anniversary, after, unresolved and event triggers, and send windows: table-driven dates.

Feb 29 and Jan 31 purchases, far-apart zones seen from a pass at 23:30 UTC, DST days,
resolved complaints and garbage dates — all pure, no services.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker.localtime import in_send_window
from worker.planning.events import Event
from worker.planning.triggers import (
    NotApplicable,
    TriggerWindow,
    evaluate,
    event_occurrence,
    occurrence_for_tag,
)
from worker.rules import load_rule_text
from worker.sources.base import Record
from worker.sources.schema import to_record

UTC_ZONE = ZoneInfo("UTC")


def rule(trigger: str, extra: str = ""):
    return load_rule_text(
        f"id: r\ntrigger:\n{trigger}{extra}"
        "send:\n  - {channel: email, template: t, to: customer.email}\n",
        Path("r.yaml"),
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def record(entity: str, **fields: str) -> Record:
    result = to_record(entity, {"id": "7", **fields}, "test")
    assert isinstance(result, Record)
    return result


def customer_in(zone: str):
    return lambda: record("customer", timezone=zone)


def day_window(now: str) -> TriggerWindow:
    end = at(now)
    return TriggerWindow(end - timedelta(days=1), end)


def scan(rule_, subject, start: str, days: int, zone: str = "UTC", step_h: int = 1):
    """Every (key, due) found by hourly passes over ``days`` days: each key must appear once."""
    found = []
    begin = at(start)
    for n in range(days * 24 // step_h):
        end = begin + timedelta(hours=(n + 1) * step_h)
        window = TriggerWindow(end - timedelta(hours=step_h), end)
        found += [
            (o.key, o.due_at)
            for o in evaluate(rule_, subject, window, UTC_ZONE, customer=customer_in(zone))
        ]
    return found


ANNIVERSARY = "  anniversary:\n    field: purchase.purchased_at\n    at: '10:00'\n"


@pytest.mark.parametrize(
    ("options", "bought", "zone", "now", "expected"),
    [
        # Feb 29 purchase, first anniversary in a common year: Feb 28 (10:00 CET = 09:00 UTC).
        (
            "    years: [1]\n",
            "2024-02-29T10:00:00Z",
            "Europe/Berlin",
            "2025-02-28T12:00:00Z",
            [("1", "2025-02-28T09:00:00+00:00")],
        ),
        ("    years: [1]\n", "2024-02-29T10:00:00Z", "Europe/Berlin", "2025-03-01T12:00:00Z", []),
        (
            "    years: [1]\n    feb29: mar1\n",
            "2024-02-29T10:00:00Z",
            "Europe/Berlin",
            "2025-03-01T12:00:00Z",
            [("1", "2025-03-01T09:00:00+00:00")],
        ),
        # Every year: in the leap year 2028 it is Feb 29 again (the 4th anniversary).
        (
            "",
            "2024-02-29T10:00:00Z",
            "Europe/Berlin",
            "2028-02-29T12:00:00Z",
            [("4", "2028-02-29T09:00:00+00:00")],
        ),
        ("", "2024-02-29T10:00:00Z", "Europe/Berlin", "2028-02-28T12:00:00Z", []),
        # years: [1] never fires in year 2.
        ("    years: [1]\n", "2024-02-29T10:00:00Z", "Europe/Berlin", "2026-02-28T12:00:00Z", []),
        # Jan 31 stays Jan 31 (no month-end drift).
        (
            "",
            "2025-01-31T08:00:00Z",
            "Europe/Berlin",
            "2026-01-31T12:00:00Z",
            [("1", "2026-01-31T09:00:00+00:00")],
        ),
        # 2025-01-31 18:30 UTC is already Feb 1 in Auckland: the customer's own calendar counts.
        # The pass at 23:30 UTC on Jan 31 is Feb 1 10:30 there: due at 10:00 NZDT (21:00 UTC).
        (
            "",
            "2025-01-31T18:30:00Z",
            "Pacific/Auckland",
            "2026-01-31T23:30:00Z",
            [("1", "2026-01-31T21:00:00+00:00")],
        ),
        # ... and the same purchase in Los Angeles: Jan 31, 10:00 PST = 18:00 UTC.
        (
            "",
            "2025-01-31T18:30:00Z",
            "America/Los_Angeles",
            "2026-01-31T23:30:00Z",
            [("1", "2026-01-31T18:00:00+00:00")],
        ),
        # A purchase in the future has no anniversary yet (no error either).
        ("", "2027-05-01T08:00:00Z", "UTC", "2026-05-01T12:00:00Z", []),
    ],
)
def test_anniversary(options, bought, zone, now, expected):
    found = evaluate(
        rule(ANNIVERSARY + options),
        record("purchase", customer_id="1", purchased_at=bought),
        day_window(now),
        UTC_ZONE,
        TriggerWindow(at(now) - timedelta(days=1), at(now)).month_days(),
        customer=customer_in(zone),
    )
    assert [(o.tag, o.due_at) for o in found] == [(tag, at(due)) for tag, due in expected]


def test_anniversary_key_survives_a_corrected_purchase_date():
    r = rule(ANNIVERSARY)
    before = occurrence_for_tag(
        r, record("purchase", purchased_at="2024-12-30T10:00:00Z"), "1", UTC_ZONE
    )
    after = occurrence_for_tag(
        r, record("purchase", purchased_at="2025-01-02T10:00:00Z"), "1", UTC_ZONE
    )
    assert before is not None and after is not None and before.key == after.key


AFTER = "  after:\n    field: purchase.delivered_at\n    delay: 7d\n"


@pytest.mark.parametrize(
    ("options", "delivered", "zone", "expected"),
    [
        # Exactly 7 days later.
        ("", "2026-03-01T15:00:00Z", "Europe/Berlin", "2026-03-08T15:00:00+00:00"),
        # Moved to 10:00 local on that day (CET, UTC+1).
        ("    at: '10:00'\n", "2026-03-01T15:00:00Z", "Europe/Berlin", "2026-03-08T09:00:00+00:00"),
        # The 7th day is the EU spring-forward day: 02:30 does not exist, sent once at 03:30.
        ("    at: '02:30'\n", "2026-03-22T12:00:00Z", "Europe/Berlin", "2026-03-29T01:30:00+00:00"),
        # The 25-hour autumn day: 02:30 happens twice, sent once (the first).
        ("    at: '02:30'\n", "2026-10-18T12:00:00Z", "Europe/Berlin", "2026-10-25T00:30:00+00:00"),
        # Far-apart zones: local day of "delivered + 7d" differs.
        (
            "    at: '10:00'\n",
            "2026-03-01T20:00:00Z",
            "Pacific/Auckland",
            "2026-03-08T21:00:00+00:00",
        ),
        (
            "    at: '10:00'\n",
            "2026-03-01T20:00:00Z",
            "America/Los_Angeles",
            "2026-03-08T17:00:00+00:00",
        ),
    ],
)
def test_after_is_due_exactly_once(options, delivered, zone, expected):
    found = scan(
        rule(AFTER + options),
        record("purchase", customer_id="1", delivered_at=delivered),
        delivered,
        days=10,
        zone=zone,
    )
    assert found == [("r:purchase:7:once", at(expected))]


UNRESOLVED = "  unresolved:\n    after: 2d\n    every: 3d\n    times: 3\n"


@pytest.mark.parametrize(
    ("resolved", "expected_tags"),
    [
        ("", ["1", "2", "3"]),  # open for good: 3 follow-ups, then silence
        ("2026-03-04T00:00:00Z", ["1"]),  # resolved after the first
        ("2026-03-02T00:00:00Z", []),  # resolved before the first
    ],
)
def test_unresolved_follow_ups(resolved, expected_tags):
    complaint = record(
        "complaint", customer_id="1", opened_at="2026-03-01T08:00:00Z", resolved_at=resolved
    )
    found = []
    begin = at("2026-03-01T00:00:00Z")
    for n in range(20 * 24):
        end = begin + timedelta(hours=n + 1)
        try:
            found += evaluate(
                rule(UNRESOLVED), complaint, TriggerWindow(end - timedelta(hours=1), end), UTC_ZONE
            )
        except NotApplicable as exc:
            assert "resolved" in exc.reason
    due = {"1": "2026-03-03T08:00:00+00:00", "2": "2026-03-06T08:00:00+00:00",
           "3": "2026-03-09T08:00:00+00:00"}  # fmt: skip
    assert [(o.tag, o.due_at) for o in found] == [(t, at(due[t])) for t in expected_tags]


def test_resolved_complaint_is_not_due_at_send_time():
    r = rule(UNRESOLVED)
    complaint = record(
        "complaint", opened_at="2026-03-01T08:00:00Z", resolved_at="2026-03-03T08:30:00Z"
    )
    # Planned at 08:00, resolved at 08:30, the worker gets to it at 09:00: skip with reason.
    with pytest.raises(NotApplicable, match="resolved at 2026-03-03T08:30"):
        occurrence_for_tag(r, complaint, "1", UTC_ZONE, now=at("2026-03-03T09:00:00Z"))
    still_open = occurrence_for_tag(r, complaint, "1", UTC_ZONE, now=at("2026-03-03T08:10:00Z"))
    assert still_open is not None and still_open.key == "r:complaint:7:1"
    assert occurrence_for_tag(r, complaint, "4", UTC_ZONE) is None  # beyond times: 3


@pytest.mark.parametrize(
    ("trigger", "entity", "fields", "reason"),
    [
        (ANNIVERSARY, "purchase", {"purchased_at": "0000-00-00"}, "'0000-00-00' is not usable"),
        (ANNIVERSARY, "purchase", {"purchased_at": "2025-02-30T10:00:00Z"}, "is not usable"),
        (ANNIVERSARY, "purchase", {"purchased_at": ""}, "no purchased_at"),
        (AFTER, "purchase", {"delivered_at": "soon"}, "'soon' is not usable"),
        (AFTER, "purchase", {"delivered_at": "2026-02-30T10:00:00Z"}, "is not usable"),
        (UNRESOLVED, "complaint", {"opened_at": ""}, "no opened_at"),
        (
            UNRESOLVED,
            "complaint",
            {"opened_at": "2026-03-01T08:00:00Z", "resolved_at": "yesterday"},
            "'yesterday' is not usable",
        ),
    ],
)
def test_garbage_dates_are_skipped_with_a_reason(trigger, entity, fields, reason):
    window = TriggerWindow(at("2026-01-01T00:00:00Z"), at("2026-12-31T00:00:00Z"))
    with pytest.raises(NotApplicable, match=reason):
        evaluate(rule(trigger), record(entity, **fields), window, UTC_ZONE)


BERLIN = "Europe/Berlin"


@pytest.mark.parametrize(
    ("instant", "start", "end", "zone", "expected"),
    [
        # Inside the window: unchanged.
        ("2026-03-14T12:00:00Z", "08:00", "20:00", BERLIN, "2026-03-14T12:00:00Z"),
        # 22:00 local: next morning 08:00.
        ("2026-03-14T21:00:00Z", "08:00", "20:00", BERLIN, "2026-03-15T07:00:00Z"),
        # 06:00 local: 08:00 the same day.
        ("2026-03-14T05:00:00Z", "08:00", "20:00", BERLIN, "2026-03-14T07:00:00Z"),
        # The closing minute itself is outside.
        ("2026-03-14T19:00:00Z", "08:00", "20:00", BERLIN, "2026-03-15T07:00:00Z"),
        # Night before spring forward: opens at 08:00 CEST (06:00 UTC).
        ("2026-03-28T20:00:00Z", "08:00", "20:00", BERLIN, "2026-03-29T06:00:00Z"),
        # Night before the 25-hour day: opens at 08:00 CET (07:00 UTC).
        ("2026-10-24T19:00:00Z", "08:00", "20:00", BERLIN, "2026-10-25T07:00:00Z"),
        # A window opening in the spring gap (02:30 does not exist): moved forward one hour.
        ("2026-03-29T00:30:00Z", "02:30", "05:00", BERLIN, "2026-03-29T01:30:00Z"),
        # A window across midnight.
        ("2026-03-14T23:30:00Z", "22:00", "06:00", BERLIN, "2026-03-14T23:30:00Z"),
        ("2026-03-14T12:00:00Z", "22:00", "06:00", BERLIN, "2026-03-14T21:00:00Z"),
        # Far-apart zones at the same instant (23:30 UTC).
        ("2026-03-13T23:30:00Z", "08:00", "20:00", "Pacific/Auckland", "2026-03-13T23:30:00Z"),
        ("2026-03-13T23:30:00Z", "08:00", "20:00", "America/Los_Angeles", "2026-03-13T23:30:00Z"),
        ("2026-03-14T04:00:00Z", "08:00", "20:00", "America/Los_Angeles", "2026-03-14T15:00:00Z"),
    ],
)
def test_send_window(instant, start, end, zone, expected):
    moved = in_send_window(
        at(instant), time.fromisoformat(start), time.fromisoformat(end), ZoneInfo(zone)
    )
    assert moved == at(expected)


def test_send_window_moves_the_due_time_of_a_rule():
    r = rule(AFTER, "send_window: {from: '08:00', to: '20:00'}\n")
    purchase = record("purchase", delivered_at="2026-03-01T22:00:00Z")
    found = scan(r, purchase, "2026-03-07T00:00:00Z", days=3, zone=BERLIN)
    # 2026-03-08 23:00 Berlin is outside the window: next morning at 08:00 CET.
    assert found == [("r:purchase:7:once", at("2026-03-09T07:00:00Z"))]
    again = occurrence_for_tag(r, purchase, "once", UTC_ZONE, customer=customer_in(BERLIN))
    assert again is not None and again.due_at == at("2026-03-09T07:00:00Z")


def test_event_occurrence_key_and_due_time():
    r = rule(
        "  event:\n    type: purchase.created\n", "send_window: {from: '08:00', to: '20:00'}\n"
    )
    event = Event("crm-1", "purchase.created", "P17", at("2026-03-14T22:00:00Z"), {})
    found = event_occurrence(r, event, UTC_ZONE, customer=customer_in(BERLIN))
    assert found.key == "r:purchase:P17:crm-1"
    assert found.due_at == at("2026-03-15T07:00:00Z")
    again = occurrence_for_tag(r, record("purchase"), "crm-1", UTC_ZONE, event=event)
    assert again is None  # record 7 is not the event's record P17


@pytest.mark.parametrize(
    ("local_time", "bought", "expected"),
    [
        # 2026-03-29 is the EU spring-forward day: 02:30 does not exist, sent once at 03:30 CEST.
        ("02:30", "2025-03-29T12:00:00Z", "2026-03-29T01:30:00+00:00"),
        # 2026-10-25 has 25 hours: 02:30 happens twice, sent once (the first, CEST).
        ("02:30", "2025-10-25T12:00:00Z", "2026-10-25T00:30:00+00:00"),
    ],
)
def test_anniversary_on_dst_days_is_due_exactly_once(local_time, bought, expected):
    r = rule(f"  anniversary:\n    field: purchase.purchased_at\n    at: '{local_time}'\n")
    purchase = record("purchase", purchased_at=bought)
    start = (at(expected) - timedelta(days=2)).isoformat()
    assert scan(r, purchase, start, days=4, zone=BERLIN) == [("r:purchase:7:1", at(expected))]


def test_after_on_an_untyped_column_with_an_iso_date():
    # Extra CSV columns reach the worker as text; an ISO date in one still works.
    r = rule("  after:\n    field: purchase.warranty_ends\n    delay: 0d\n    at: '09:00'\n")
    purchase = record("purchase", warranty_ends="2026-05-01")
    found = scan(r, purchase, "2026-04-29T00:00:00Z", days=4, zone=BERLIN, step_h=6)
    assert found == [("r:purchase:7:once", at("2026-05-01T07:00:00Z"))]
    with pytest.raises(NotApplicable, match="'soon' is not a date"):
        evaluate(r, record("purchase", warranty_ends="soon"), day_window(NOW_ISO), UTC_ZONE)


NOW_ISO = "2026-05-01T12:00:00Z"


def test_after_an_empty_date_is_simply_not_due():
    # Not delivered yet: no occurrence, and no reason to report as a problem.
    window = TriggerWindow(at("2026-01-01T00:00:00Z"), at("2026-12-31T00:00:00Z"))
    assert evaluate(rule(AFTER), record("purchase", delivered_at=""), window, UTC_ZONE) == []
