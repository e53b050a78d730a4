"""Birthday dates: Feb 29, far-apart time zones, DST days, bad data — table-driven."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker.localtime import yearly_date
from worker.planning.triggers import NotApplicable, TriggerWindow, evaluate, occurrence_for_tag
from worker.rules import load_rule_text
from worker.sources.base import Record

UTC_ZONE = ZoneInfo("UTC")


def birthday_rule(at: str = "09:00", feb29: str = "feb28"):
    return load_rule_text(
        f"id: bday\ntrigger:\n  birthday:\n    at: '{at}'\n    feb29: {feb29}\n"
        "send:\n  - {channel: email, template: birthday, to: customer.email}\n",
        Path("bday.yaml"),
    )


def customer(birthday: str, zone: str | None = None, problems: dict[str, str] | None = None):
    born = date.fromisoformat(birthday) if birthday else None
    return Record("customer", "42", {"birthday": born, "timezone": zone}, problems or {})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("month", "day", "year", "policy", "expected"),
    [
        (2, 29, 2025, "feb28", date(2025, 2, 28)),
        (2, 29, 2025, "mar1", date(2025, 3, 1)),
        (2, 29, 2028, "feb28", date(2028, 2, 29)),
        (2, 29, 2028, "mar1", date(2028, 2, 29)),
        (2, 29, 2100, "feb28", date(2100, 2, 28)),  # 2100 is not a leap year
        (2, 29, 2000, "mar1", date(2000, 2, 29)),  # 2000 is
        (1, 31, 2026, "feb28", date(2026, 1, 31)),
        (12, 31, 2026, "feb28", date(2026, 12, 31)),
    ],
)
def test_yearly_date(month, day, year, policy, expected):
    assert yearly_date(month, day, year, policy) == expected


@pytest.mark.parametrize(
    ("birthday", "zone", "now", "expected_due"),
    [
        # 09:00 local in Berlin (CET, UTC+1) on Mar 14 is 08:00 UTC.
        ("1990-03-14", "Europe/Berlin", "2026-03-14T10:00:00+00:00", "2026-03-14T08:00:00+00:00"),
        # Not yet 09:00 in Los Angeles: nothing due yet.
        ("1990-03-14", "America/Los_Angeles", "2026-03-14T10:00:00+00:00", None),
        # Scheduler at 23:30 UTC on Mar 13: already Mar 14 10:30 in Auckland (NZDT, UTC+13).
        (
            "1990-03-14",
            "Pacific/Auckland",
            "2026-03-13T23:30:00+00:00",
            "2026-03-13T20:00:00+00:00",
        ),
        # ... and for Los Angeles the 13th's birthday at 09:00 PDT (16:00 UTC) is due.
        (
            "1985-03-13",
            "America/Los_Angeles",
            "2026-03-13T23:30:00+00:00",
            "2026-03-13T16:00:00+00:00",
        ),
        # Unknown/missing zone: the default (UTC).
        ("1990-03-14", None, "2026-03-14T10:00:00+00:00", "2026-03-14T09:00:00+00:00"),
        # Feb 29 birthday in a common year goes out on Feb 28 ...
        ("1988-02-29", "UTC", "2025-02-28T12:00:00+00:00", "2025-02-28T09:00:00+00:00"),
        # ... and not again on Mar 1.
        ("1988-02-29", "UTC", "2025-03-01T12:00:00+00:00", None),
        # In a leap year it is Feb 29 itself.
        ("1988-02-29", "UTC", "2028-02-29T12:00:00+00:00", "2028-02-29T09:00:00+00:00"),
        ("1988-02-29", "UTC", "2028-02-28T12:00:00+00:00", None),
        # New Year across zones: Dec 31 birthday in Honolulu, seen from Jan 1 UTC.
        (
            "1970-12-31",
            "Pacific/Honolulu",
            "2027-01-01T05:00:00+00:00",
            "2026-12-31T19:00:00+00:00",
        ),
    ],
)
def test_birthday_due(birthday, zone, now, expected_due):
    end = at(now)
    window = TriggerWindow(end - timedelta(days=1), end)
    found = evaluate(birthday_rule(), customer(birthday, zone), window, UTC_ZONE)
    assert [o.due_at for o in found] == ([at(expected_due)] if expected_due else [])


def test_feb29_mar1_policy_in_common_year():
    end = at("2025-03-01T12:00:00+00:00")
    window = TriggerWindow(end - timedelta(days=1), end)
    found = evaluate(birthday_rule(feb29="mar1"), customer("1988-02-29", "UTC"), window, UTC_ZONE)
    assert [o.due_at for o in found] == [at("2025-03-01T09:00:00+00:00")]


@pytest.mark.parametrize(
    ("local_time", "day", "zone", "expected_utc"),
    [
        # US spring forward 2026-03-08: 02:30 does not exist; sent once, at 03:30 EDT.
        ("02:30", "2026-03-08", "America/New_York", "2026-03-08T07:30:00+00:00"),
        # US fall back 2026-11-01: 01:30 happens twice; sent once, at the first (EDT).
        ("01:30", "2026-11-01", "America/New_York", "2026-11-01T05:30:00+00:00"),
        # EU spring forward 2026-03-29 at 02:00 in Berlin.
        ("02:30", "2026-03-29", "Europe/Berlin", "2026-03-29T01:30:00+00:00"),
    ],
)
def test_dst_days_give_exactly_one_occurrence(local_time, day, zone, expected_utc):
    rule = birthday_rule(at=local_time)
    record = customer(f"1980-{day[5:]}", zone)
    # Scan the whole week in hourly passes: the key must appear exactly once.
    keys = []
    start = at(f"{day}T00:00:00+00:00") - timedelta(days=2)
    for hour in range(24 * 5):
        end = start + timedelta(hours=hour + 1)
        window = TriggerWindow(end - timedelta(hours=1), end)
        keys += [(o.key, o.due_at) for o in evaluate(rule, record, window, UTC_ZONE)]
    assert keys == [(f"bday:customer:42:{day[:4]}", at(expected_utc))]


def test_bad_dates_are_skipped_with_reason():
    window = TriggerWindow(at("2026-01-01T00:00:00+00:00"), at("2026-01-02T00:00:00+00:00"))
    bad = customer("", "UTC", {"birthday": "birthday '0000-00-00' is not usable"})
    with pytest.raises(NotApplicable, match="0000-00-00"):
        evaluate(birthday_rule(), bad, window, UTC_ZONE)
    with pytest.raises(NotApplicable, match="no birthday"):
        evaluate(birthday_rule(), customer("", "UTC"), window, UTC_ZONE)
    with pytest.raises(NotApplicable, match="future"):
        evaluate(birthday_rule(), customer("2027-01-01", "UTC"), window, UTC_ZONE)


def test_same_keys_whatever_the_window():
    record = customer("1990-06-15", "Asia/Tokyo")
    rule = birthday_rule()
    end = at("2026-06-15T03:00:00+00:00")  # 09:00 in Tokyo is 00:00 UTC
    small = evaluate(rule, record, TriggerWindow(end - timedelta(hours=6), end), UTC_ZONE)
    large = evaluate(rule, record, TriggerWindow(end - timedelta(days=400), end), UTC_ZONE)
    assert [o.key for o in small] == ["bday:customer:42:2026"]
    assert [o.key for o in large] == ["bday:customer:42:2025", "bday:customer:42:2026"]


def test_birthday_edited_after_sending_keeps_the_year_key():
    rule = birthday_rule()
    before = occurrence_for_tag(rule, customer("1990-06-15", "UTC"), "2026", UTC_ZONE)
    after = occurrence_for_tag(rule, customer("1990-09-01", "UTC"), "2026", UTC_ZONE)
    assert before is not None and after is not None
    assert before.key == after.key  # the ledger already holds this key: no second mail
