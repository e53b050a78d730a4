"""Calendar dates are the customer's calendar (README, "Dates and time zones").

A date without a time (``2026-02-28``, a SQL ``DATE``) is that day in the customer's own zone;
a value with a time and an offset (or a ``TIMESTAMPTZ``) is an instant. Anniversaries and
"N days after" count calendar days in the customer's zone and go out at the rule's local hour;
the ``date`` filter prints the day on the reader's calendar. Pure tests first (tables, then
properties over every zone offset from UTC-12 to UTC+14), then the same plans from CSV text,
PostgreSQL and MariaDB columns of every date type.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel import Locale
from babel.dates import format_date
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from tests.test_headers import parsed
from tests.test_sql_source import PASSWORD, _reachable, _scratch
from worker.constants import LEDGER_KEY_PREFIX
from worker.errors import RuleError
from worker.localtime import later_on_calendar, yearly_date
from worker.messages.filters import date_filter, datetime_filter, formatting_locale
from worker.planning.plan import PlannedDelivery, plan
from worker.planning.triggers import TriggerWindow, evaluate, occurrence_for_tag
from worker.rules import load_rule_text
from worker.rules.catalog import RuleCatalog
from worker.rules.models import Rule
from worker.sources import open_source
from worker.sources.base import Record
from worker.sources.csv import CsvSource
from worker.sources.schema import to_record

LA = ZoneInfo("America/Los_Angeles")

#: Every whole and odd offset from UTC-12 to UTC+14, with and without DST, both hemispheres.
ZONES = [
    "Etc/GMT+12",  # UTC-12 (the sign of Etc/ names is inverted)
    "Pacific/Pago_Pago",  # UTC-11
    "Pacific/Honolulu",  # UTC-10
    "America/Los_Angeles",  # UTC-8 / -7
    "America/St_Johns",  # UTC-3:30 / -2:30
    "America/Santiago",  # UTC-4 / -3, southern DST
    "UTC",
    "Europe/London",
    "Europe/Madrid",
    "Asia/Tehran",  # UTC+3:30
    "Asia/Kolkata",  # UTC+5:30
    "Asia/Kathmandu",  # UTC+5:45
    "Australia/Lord_Howe",  # UTC+10:30 / +11: a 30-minute DST change
    "Pacific/Auckland",  # UTC+12 / +13
    "Pacific/Chatham",  # UTC+12:45 / +13:45
    "Pacific/Kiritimati",  # UTC+14
]


def rule(trigger: str) -> Rule:
    return load_rule_text(
        f"id: r\ntrigger:\n{trigger}"
        "send:\n  - {channel: email, template: t, to: customer.email}\n",
        Path("r.yaml"),
    )


def purchase(**fields: str) -> Record:
    result = to_record("purchase", {"id": "p1", "customer_id": "c1", **fields}, "test")
    assert isinstance(result, Record)
    return result


def customer(zone: str) -> Record:
    result = to_record("customer", {"id": "c1", "timezone": zone}, "test")
    assert isinstance(result, Record)
    return result


def wall(day: date, at: time, zone: ZoneInfo) -> time | None:
    """``at`` if it exists on ``day`` in ``zone``, None inside a spring-forward gap."""
    there = datetime.combine(day, at, tzinfo=zone)
    back = there.astimezone(UTC).astimezone(zone)
    return at if back.replace(tzinfo=None) == there.replace(tzinfo=None) else None


def assert_local(due: datetime, day: date, at: time, zone: ZoneInfo) -> None:
    """``due`` is ``at`` on ``day`` in ``zone`` (within the gap when ``at`` does not exist)."""
    local = due.astimezone(zone)
    assert local.date() == day, (due, day, zone)
    if wall(day, at, zone) is not None:
        assert local.time() == at, (due, at, zone)
    else:  # moved forward by the gap (at most an hour), never to another day
        gap = datetime.combine(day, local.time()) - datetime.combine(day, at)
        assert timedelta(0) < gap <= timedelta(hours=1), (due, at, zone)


# -- reading the CRM's values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2026-02-28", date(2026, 2, 28)),  # a calendar date stays a date
        ("2026-02-28T00:00:00Z", datetime(2026, 2, 28, tzinfo=UTC)),
        ("2026-02-28T00:00:00", datetime(2026, 2, 28, tzinfo=UTC)),  # no offset: UTC
        ("2026-02-28 01:30:00+01:00", datetime(2026, 2, 28, 0, 30, tzinfo=UTC)),
        ("2026-02-27T16:00:00-08:00", datetime(2026, 2, 28, tzinfo=UTC)),
    ],
)
def test_date_fields_are_calendar_dates_or_instants(text: str, value: date) -> None:
    record = purchase(purchased_at=text, delivered_at=text)
    assert record["purchased_at"] == value
    assert type(record["purchased_at"]) is type(value)
    assert not record.problems


# -- the cases, table-driven ---------------------------------------------------------

ANNIVERSARY = "  anniversary:\n    field: purchase.purchased_at\n    at: '10:00'\n"
AFTER = "  after:\n    field: purchase.delivered_at\n    delay: 7d\n    at: '10:00'\n"


@pytest.mark.parametrize(
    ("zone", "bought", "due_local"),
    [
        # West of UTC: the day a midnight-UTC reading would have moved to Feb 27.
        ("America/Los_Angeles", "2026-02-28", "2027-02-28T10:00:00-08:00"),
        ("Pacific/Honolulu", "2026-02-28", "2027-02-28T10:00:00-10:00"),
        # East of UTC: the same calendar day as well.
        ("Pacific/Auckland", "2026-02-28", "2027-02-28T10:00:00+13:00"),
        ("Pacific/Kiritimati", "2026-02-28", "2027-02-28T10:00:00+14:00"),
        # Jan 31 and Feb 29 by the rule's policy (feb28).
        ("America/Los_Angeles", "2024-02-29", "2025-02-28T10:00:00-08:00"),
        ("America/Los_Angeles", "2026-01-31", "2027-01-31T10:00:00-08:00"),
    ],
)
def test_anniversary_of_a_calendar_date_is_on_its_day_in_the_customers_zone(
    zone: str, bought: str, due_local: str
) -> None:
    record = purchase(purchased_at=bought)
    expected = datetime.fromisoformat(due_local).astimezone(UTC)
    found = evaluate(
        rule(ANNIVERSARY),
        record,
        TriggerWindow(expected - timedelta(days=3), expected + timedelta(days=3)),
        ZoneInfo("UTC"),
        customer=lambda: customer(zone),
    )
    assert [(o.key, o.due_at) for o in found] == [("r:purchase:p1:1", expected)]
    assert found[0].zone == ZoneInfo(zone)


@pytest.mark.parametrize(
    ("zone", "delivered", "due_local"),
    [
        # 2026-03-08 is the day the US clocks go forward: still 10:00 local, the 7th day.
        ("America/Los_Angeles", "2026-03-01", "2026-03-08T10:00:00-07:00"),
        ("Europe/Madrid", "2026-05-20", "2026-05-27T10:00:00+02:00"),
        # An instant counts from the customer's local date: 23:30 in LA is already the 2nd
        # in UTC, but the follow-up is 7 days after the 1st.
        ("America/Los_Angeles", "2026-06-02T06:30:00Z", "2026-06-08T10:00:00-07:00"),
        # Autumn: Europe's clocks go back on 2026-10-25; the 7th day is still the 7th day.
        ("Europe/Madrid", "2026-10-20T22:30:00Z", "2026-10-28T10:00:00+01:00"),
    ],
)
def test_after_counts_calendar_days_in_the_customers_zone(
    zone: str, delivered: str, due_local: str
) -> None:
    expected = datetime.fromisoformat(due_local).astimezone(UTC)
    occurrence = occurrence_for_tag(
        rule(AFTER),
        purchase(delivered_at=delivered),
        "once",
        ZoneInfo("UTC"),
        customer=lambda: customer(zone),
    )
    assert occurrence is not None
    assert occurrence.due_at == expected


def test_after_without_a_local_hour_keeps_the_wall_clock_across_dst() -> None:
    """Exactly "2 days later" by the customer's clock, not 48 hours across a DST change."""
    start = datetime(2026, 3, 7, 18, tzinfo=UTC)  # 10:00 in LA, the day before DST starts
    assert later_on_calendar(start, timedelta(days=2), LA).astimezone(LA).time() == time(10)
    assert later_on_calendar(start, timedelta(days=2, hours=3), LA).astimezone(LA).hour == 13
    assert later_on_calendar(date(2026, 3, 7), timedelta(days=2), LA) == datetime(
        2026, 3, 9, 7, tzinfo=UTC
    )  # a calendar date starts at local midnight


# -- properties: every zone, leap years, DST -------------------------------------------------

zones = st.sampled_from(ZONES).map(ZoneInfo)
# From 1996: Kiritimati skipped 31 Dec 1994 altogether (moving from UTC-10 to UTC+14).
calendar_days = st.dates(min_value=date(1996, 1, 1), max_value=date(2035, 12, 31))
local_hours = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=300, deadline=None)
@given(
    zone=zones,
    day=calendar_days | st.sampled_from([date(2024, 2, 29), date(2000, 2, 29), date(2028, 1, 31)]),
    years=st.integers(1, 80),
    at=local_hours,
    feb29=st.sampled_from(["feb28", "mar1"]),
)
def test_anniversary_falls_on_the_dates_month_and_day_in_the_customers_zone(
    zone: ZoneInfo, day: date, years: int, at: time, feb29: str
) -> None:
    spec = (
        f"  anniversary:\n    field: purchase.purchased_at\n    at: '{at:%H:%M}'\n"
        f"    feb29: {feb29}\n"
    )
    anniversary = rule(spec)
    record = purchase(purchased_at=day.isoformat())
    occurrence = occurrence_for_tag(
        anniversary, record, str(years), ZoneInfo("UTC"), customer=lambda: customer(zone.key)
    )
    assert occurrence is not None
    expected = yearly_date(day.month, day.day, day.year + years, feb29)  # type: ignore[arg-type]
    assert_local(occurrence.due_at, expected, at, zone)
    # A pass whose window holds the due time finds it exactly once, with the same key.
    window = TriggerWindow(occurrence.due_at - timedelta(hours=1), occurrence.due_at)
    found = evaluate(
        anniversary,
        record,
        window,
        ZoneInfo("UTC"),
        window.month_days(),
        customer=lambda: customer(zone.key),
    )
    assert [(o.key, o.due_at) for o in found] == [(occurrence.key, occurrence.due_at)]
    # The `date` filter prints that very day to the customer.
    with formatting_locale(Locale("en"), zone):
        assert date_filter(occurrence.due_at.isoformat(), "short") == format_date(
            expected, "short", locale="en"
        )


@settings(max_examples=300, deadline=None)
@given(
    zone=zones,
    start=calendar_days
    | st.datetimes(
        min_value=datetime(1996, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
    ),
    days=st.integers(0, 400),
    at=local_hours,
)
def test_a_follow_up_n_days_after_falls_n_calendar_days_later(
    zone: ZoneInfo, start: date, days: int, at: time
) -> None:
    text = start.isoformat()
    after = rule(
        f"  after:\n    field: purchase.delivered_at\n    delay: {days}d\n    at: '{at:%H:%M}'\n"
    )
    occurrence = occurrence_for_tag(
        after, purchase(delivered_at=text), "once", ZoneInfo("UTC"),
        customer=lambda: customer(zone.key),
    )  # fmt: skip
    assert occurrence is not None
    first = start.astimezone(zone).date() if isinstance(start, datetime) else start
    assert_local(occurrence.due_at, first + timedelta(days=days), at, zone)
    with formatting_locale(Locale("de"), zone):
        assert date_filter(occurrence.due_at.isoformat()) == format_date(
            occurrence.due_at.astimezone(zone).date(), "medium", locale="de"
        )


# -- what a reader sees ----------------------------------------------------------------------


def test_date_filter_prints_the_readers_day_and_calendar_dates_as_they_are() -> None:
    due = "2026-05-26T22:30:00+00:00"  # 27 May, 00:30 in Madrid
    with formatting_locale(Locale("es"), ZoneInfo("Europe/Madrid")):
        assert date_filter(due, "long") == "27 de mayo de 2026"
        assert date_filter("2026-05-27", "long") == "27 de mayo de 2026"
    with formatting_locale(Locale("en"), LA):
        assert date_filter(due, "long") == "May 26, 2026"
        assert date_filter("2026-05-27", "long") == "May 27, 2026"  # same day everywhere


def test_a_time_in_another_zone_than_the_readers_names_both_zones() -> None:
    opened = "2026-05-27T12:00:00+00:00"  # 14:00 in Madrid
    with formatting_locale(Locale("en"), ZoneInfo("Europe/Madrid")):  # the customer
        assert datetime_filter(opened, "short", "Europe/Madrid") == "5/27/26, 2:00\u202fPM"
    with formatting_locale(Locale("en"), ZoneInfo("UTC")):  # staff in UTC
        assert (
            datetime_filter(opened, "short", "Europe/Madrid")
            == "5/27/26, 2:00\u202fPM Europe/Madrid (12:00\u202fPM UTC)"
        )
    with formatting_locale(Locale("de"), ZoneInfo("Europe/Berlin")):
        assert (
            datetime_filter(opened, "short", "America/Los_Angeles")
            == "27.05.26, 05:00 America/Los_Angeles (14:00 Europe/Berlin)"
        )
        # A zone the CRM does not know shows the reader's own time.
        assert datetime_filter(opened, "short", "Mars/Olympus") == "27.05.26, 14:00"


# -- the same plans from CSV text, PostgreSQL and MariaDB columns ----------------------------

CUSTOMERS = [
    ("c1", "America/Los_Angeles"),
    ("c2", "Pacific/Auckland"),
    ("c3", "Europe/Madrid"),
    ("c4", "Pacific/Honolulu"),
]
#: (id, customer, purchase day, delivery instant)
PURCHASES = [
    ("p1", "c1", "2026-02-28", "2026-03-02T07:30:00+00:00"),  # delivered Mar 1, 23:30 in LA
    ("p2", "c2", "2026-02-28", "2026-03-01T11:30:00+00:00"),  # delivered Mar 2, 00:30 NZ
    ("p3", "c3", "2026-02-28", "2026-03-01T23:30:00+00:00"),
    ("p4", "c4", "2024-02-29", "2026-03-01T12:00:00+00:00"),
]
RULES = {
    "anniversary": "anniversary: {field: purchase.purchased_at, at: '10:00'}",
    "follow-up": "after: {field: purchase.delivered_at, delay: 7d, at: '10:00'}",
}
#: Passes every 6 hours over the days the messages fall due.
NOWS = [
    datetime(2027, 2, 26, 23, 30, tzinfo=UTC) + timedelta(hours=6 * n) for n in range(4 * 4)
] + [datetime(2026, 3, 7, 23, 30, tzinfo=UTC) + timedelta(hours=6 * n) for n in range(4 * 3)]
#: What every source must plan: (key, due instant) (the issue's cases, checked by hand).
EXPECTED = {
    ("anniversary:purchase:p1:1", datetime(2027, 2, 28, 18, tzinfo=UTC)),  # 10:00 LA, Feb 28
    ("anniversary:purchase:p2:1", datetime(2027, 2, 27, 21, tzinfo=UTC)),  # 10:00 NZ, Feb 28
    ("anniversary:purchase:p3:1", datetime(2027, 2, 28, 9, tzinfo=UTC)),  # 10:00 Madrid
    ("anniversary:purchase:p4:3", datetime(2027, 2, 28, 20, tzinfo=UTC)),  # Feb 29, 2024
    ("follow-up:purchase:p1:once", datetime(2026, 3, 8, 17, tzinfo=UTC)),  # Mar 8, PDT
    ("follow-up:purchase:p2:once", datetime(2026, 3, 8, 21, tzinfo=UTC)),  # Mar 9 NZ
    ("follow-up:purchase:p3:once", datetime(2026, 3, 9, 9, tzinfo=UTC)),  # Mar 9 Madrid
    ("follow-up:purchase:p4:once", datetime(2026, 3, 8, 20, tzinfo=UTC)),  # Mar 8 Honolulu
}


def _catalog(folder: Path) -> RuleCatalog:
    folder.mkdir()
    for rule_id, trigger in RULES.items():
        (folder / f"{rule_id}.yaml").write_text(
            f"id: {rule_id}\ntrigger: {{{trigger}}}\ngrace: 1d\n"
            "send: [{channel: email, template: birthday, to: customer.email}]\n",
            encoding="utf-8",
        )
    catalog = RuleCatalog(folder)
    assert catalog.refresh() == []
    return catalog


def _planned(catalog: RuleCatalog, source) -> set[tuple[str, datetime]]:  # type: ignore[no-untyped-def]
    found = set()
    for now in NOWS:
        for item in plan(catalog, source, now, default_zone=ZoneInfo("UTC"), company={}):
            assert isinstance(item, PlannedDelivery), item
            found.add((item.occurrence.key, item.due_at))
    return found


def _write_csv(folder: Path) -> Path:
    folder.mkdir()
    rows = {
        "customers": [["id", "email", "first_name", "timezone"]]
        + [[cid, f"{cid}@example.com", cid.upper(), zone] for cid, zone in CUSTOMERS],
        "purchases": [["id", "customer_id", "purchased_at", "delivered_at"]]
        + [list(p) for p in PURCHASES],
        "complaints": [["id", "customer_id", "opened_at", "resolved_at"]],
    }
    for name, table in rows.items():
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(table)
    return folder


def test_csv_text_plans_each_date_on_the_customers_own_day(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "rules")
    assert _planned(catalog, CsvSource(_write_csv(tmp_path / "crm"))) == EXPECTED


#: Column types per database: the purchase date as text and as DATE, the delivery as text
#: (ISO with offset) and as the database's instant type.
SQL_TYPES = {
    "postgresql": {"text": "TEXT", "date": "DATE", "instant": "TIMESTAMPTZ"},
    # MariaDB has no zone-aware type: DATETIME holds UTC wall time (no offset: read as UTC).
    "mysql": {"text": "VARCHAR(40)", "date": "DATE", "instant": "DATETIME"},
}


def _sql_crm(url: str, dialect: str) -> None:
    types = SQL_TYPES[dialect]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id VARCHAR(20) PRIMARY KEY, tz VARCHAR(60))"))
        conn.execute(
            text(
                "CREATE TABLE purchases (id VARCHAR(20) PRIMARY KEY, customer_id VARCHAR(20), "
                f"day_text {types['text']}, day_date {types['date']}, "
                f"delivered_text {types['text']}, delivered_instant {types['instant']})"
            )
        )
        conn.execute(text("CREATE TABLE complaints (id VARCHAR(20) PRIMARY KEY)"))
        for cid, zone in CUSTOMERS:
            conn.execute(text("INSERT INTO customers VALUES (:id, :tz)"), {"id": cid, "tz": zone})
        for pid, cid, day, delivered in PURCHASES:
            instant = datetime.fromisoformat(delivered)
            conn.execute(
                text("INSERT INTO purchases VALUES (:id, :c, :t, :d, :dt, :di)"),
                {
                    "id": pid,
                    "c": cid,
                    "t": day,
                    "d": date.fromisoformat(day),
                    "dt": delivered,
                    "di": instant if dialect == "postgresql" else instant.replace(tzinfo=None),
                },
            )
    engine.dispose()


def _mapping(folder: Path, day_column: str, delivered_column: str) -> Path:
    path = folder / f"queries-{day_column}-{delivered_column}.yaml"
    path.write_text(
        "customer:\n  query: SELECT id, CONCAT(id, '@example.com') AS email, tz AS timezone "
        "FROM customers\n"
        f"purchase:\n  query: SELECT id, customer_id, {day_column} AS purchased_at, "
        f"{delivered_column} AS delivered_at FROM purchases\n"
        "complaint:\n  query: SELECT id, NULL AS customer_id, NULL AS opened_at, "
        "NULL AS resolved_at FROM complaints\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(params=["postgresql", "mysql"])
def crm_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A scratch database of each kind holding the CRM above; skipped where none runs."""
    import os

    if request.param == "postgresql":
        admin = os.environ.get(
            "CRM_TEST_POSTGRES_URL",
            f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/postgres",
        )
    else:
        admin = os.environ.get("CRM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    if not _reachable(admin):
        pytest.skip(f"no {request.param} server reachable")
    name = f"crm_test_dates_{os.getpid()}"
    with _scratch(admin, name):
        url = admin.rsplit("/", 1)[0] + "/" + name
        _sql_crm(url, request.param)
        yield url, request.param


def test_sql_columns_of_every_date_type_plan_like_csv_text(
    tmp_path: Path, crm_database: tuple[str, str]
) -> None:
    url, _dialect = crm_database
    catalog = _catalog(tmp_path / "rules")
    for day_column in ("day_text", "day_date"):
        for delivered_column in ("delivered_text", "delivered_instant"):
            source = open_source(url, _mapping(tmp_path, day_column, delivered_column))
            try:
                assert _planned(catalog, source) == EXPECTED, (day_column, delivered_column)
            finally:
                source.close()  # type: ignore[attr-defined]


# -- messages to staff are written for staff -------------------------------------------------

ESCALATION_RULE = """id: complaint-follow-up
trigger:
  unresolved: {field: complaint.opened_at, resolved: complaint.resolved_at, after: 2d}
send:
  - {id: customer, channel: email, template: complaint-follow-up, to: customer.email}
  - id: escalation
    channel: email
    template: complaint-escalation
    to: customer.account_manager_email
"""


@pytest.mark.parametrize(
    ("step", "settings", "expected"),
    [
        # Nothing said: the internal defaults (CRM_DEFAULT_LOCALE, CRM_TIMEZONE = UTC).
        ("", {}, "Opened: May 25, 2026, 2:00:00\u202fPM Europe/Madrid (12:00\u202fPM UTC)"),
        (
            "",
            {"CRM_INTERNAL_LOCALE": "de", "CRM_INTERNAL_TIMEZONE": "America/New_York"},
            "Eröffnet: 25.05.2026, 14:00:00 Europe/Madrid (08:00 America/New_York)",
        ),
        # The send step wins over the settings.
        (
            "    locale: de\n    timezone: Asia/Tokyo\n",
            {"CRM_INTERNAL_LOCALE": "es", "CRM_INTERNAL_TIMEZONE": "America/New_York"},
            "Eröffnet: 25.05.2026, 14:00:00 Europe/Madrid (21:00 Asia/Tokyo)",
        ),
    ],
)
def test_an_escalation_is_written_in_staff_language_and_names_the_customers_zone(
    tmp_path: Path, make_runtime, make_settings, smtp_server, smtp_env, step, settings, expected
) -> None:  # type: ignore[no-untyped-def]
    crm = tmp_path / "crm"
    crm.mkdir()
    (crm / "customers.csv").write_text(
        "id,email,first_name,last_name,locale,timezone,account_manager_email,email_opt_in\n"
        "1,ana@example.es,Ana,Pérez,es,Europe/Madrid,boss@example.com,true\n",
        encoding="utf-8",
    )
    (crm / "purchases.csv").write_text("id,customer_id,purchased_at\n", encoding="utf-8")
    (crm / "complaints.csv").write_text(
        "id,customer_id,subject,opened_at,resolved_at\n"
        "C1,1,Paquete dañado,2026-05-25T12:00:00Z,\n",  # 14:00 in Madrid
        encoding="utf-8",
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "complaint-follow-up.yaml").write_text(ESCALATION_RULE + step, encoding="utf-8")
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_RULES_DIR=str(rules),
            **smtp_env,
            **settings,
        )
    )
    summary = runtime.run_once(datetime(2026, 5, 27, 12, 30, tzinfo=UTC))
    assert summary.states["sent"] == 2
    texts = {}
    for mail in smtp_server.received:
        message = parsed(mail.data)
        body = message.get_body(("plain",))
        assert body is not None
        texts[mail.recipients[0]] = body.get_content()
    assert expected in texts["boss@example.com"]
    # The customer reads Spanish, and the time in their own zone without naming it.
    assert "Paquete dañado" in texts["ana@example.es"]
    assert "Europe/Madrid" not in texts["ana@example.es"]


def test_a_customer_message_cannot_be_given_another_language() -> None:
    with pytest.raises(RuleError, match="for messages to staff"):
        load_rule_text(
            "id: r\ntrigger: {birthday: {}}\n"
            "send: [{channel: email, template: t, to: customer.email, locale: de}]\n",
            Path("r.yaml"),
        )
    with pytest.raises(RuleError, match=r"unknown time zone 'Europe/Berln'"):
        load_rule_text(
            "id: r\ntrigger: {birthday: {}}\nsend: [{channel: email, template: t, "
            "to: customer.account_manager_email, timezone: Europe/Berln}]\n",
            Path("r.yaml"),
        )


def test_a_ledger_written_before_dates_moved_is_still_honoured(
    tmp_path: Path, make_runtime, make_settings, smtp_server, smtp_env, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """Keys name the anniversary number or `once`, never the date: a message an older version
    sent a day early (midnight UTC read as the customer's date) keeps its key, and the pass on
    the right day finds it sent."""
    rules = tmp_path / "rules"
    _catalog(rules)
    crm = _write_csv(tmp_path / "crm")
    for key in ("anniversary:purchase:p1:1/email", "follow-up:purchase:p1:once/email"):
        redis_client.hset(f"{LEDGER_KEY_PREFIX}{key}", mapping={"state": "sent", "rule": "x"})
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_RULES_DIR=str(rules),
            **smtp_env,
        )
    )
    for now in ("2026-03-09T12:00:00Z", "2027-02-28T22:00:00Z"):
        runtime.run_once(datetime.fromisoformat(now))
    received = {mail.recipients[0] for mail in smtp_server.received}
    # Everyone else's messages go; c1's two were in the old ledger and do not.
    assert received == {"c2@example.com", "c3@example.com", "c4@example.com"}
