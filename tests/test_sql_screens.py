"""Screening a pass on the driver's own values (worker.sources.schema.parse_native) against a
real PostgreSQL: a ``date``/``timestamp``/``timestamptz`` cell is typed exactly as its ISO text
would be (UTC for a value without offset, midnight UTC for a bare date), in sessions at UTC+14,
UTC-11 and in Berlin (a DST fold, pre-1893 local mean time); and a screened SQL pass plans
exactly what the CSV of the same values (the text path) plans and what evaluating every record
finds. Also: psycopg's streamed rows stop with the pass and hand over the database's errors.
"""

from __future__ import annotations

import csv
import gc
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from tests.test_screens import NOWS, _catalog, _summary, _write_crm
from tests.test_sql_source import PASSWORD, _reachable, _scratch
from worker.errors import SourceError
from worker.planning.plan import Related, plan, plan_subject
from worker.sources.csv import CsvSource
from worker.sources.mapping import load_mapping
from worker.sources.schema import FIELD_TYPES, parse_field, parse_native
from worker.sources.sql import SqlSource, _cell_text

#: Session time zones: psycopg returns timestamptz values in the session's zone.
SESSION_ZONES = ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/Berlin"]
#: Each value in every column type it fits; the SELECT's NULLs are typed NULLs.
VALUES = [
    "TIMESTAMPTZ '2024-02-29 00:00:00+00'",
    "TIMESTAMPTZ '2024-02-28 23:59:59.999999-11'",  # already Feb 29 in UTC
    "TIMESTAMPTZ '2024-02-29 10:00+14'",  # still Feb 28 in UTC
    "TIMESTAMPTZ '2026-12-31 23:30-11'",
    "TIMESTAMPTZ '2026-10-25 00:30+00'",  # 02:30 in Berlin, before the clocks go back
    "TIMESTAMPTZ '2026-10-25 01:30+00'",  # 02:30 in Berlin again (fold=1)
    "TIMESTAMPTZ '1850-06-01 12:00+00'",  # local mean time in Berlin: +00:53:28
    "TIMESTAMPTZ '1969-12-31 23:59:59.5+00'",
    "TIMESTAMP '2024-02-29 00:00'",  # without time zone: read as UTC
    "TIMESTAMP '2023-02-28 23:59:59.999999'",
    "TIMESTAMP '2026-01-01 00:00'",
    "DATE '2024-02-29'",
    "DATE '1900-03-01'",
    "DATE '2026-12-31'",
    "NULL::timestamptz",
    "NULL::timestamp",
    "NULL::date",
    "'2024-02-29T10:00:00+14:00'::text",  # text: the text path, as before
    "' 2024-02-29 '::text",
    "'yesterday'::text",
    "''::text",
]
#: One field of each kind a driver value can be typed as: a date, a datetime, untyped text.
FIELDS = [
    ("customer", "birthday"),
    ("purchase", "purchased_at"),
    ("purchase", "product"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A scratch database's URL without a session time zone; skipped without PostgreSQL."""
    admin = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/postgres"
    if not _reachable(admin):
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    name = f"crm_test_sql_screens_{os.getpid()}"
    with _scratch(admin, name):
        yield admin.rsplit("/", 1)[0] + "/" + name


def _in_zone(url: str, zone: str) -> str:
    return f"{url}?options={quote(f'-c TimeZone={zone}')}"


@pytest.mark.parametrize("zone", SESSION_ZONES)
def test_driver_values_are_typed_as_their_text_would_be(server: str, zone: str) -> None:
    engine = create_engine(_in_zone(server, zone))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar_one() == zone
            cells = list(conn.execute(text(f"SELECT {', '.join(VALUES)}")).one())
    finally:
        engine.dispose()
    assert any(isinstance(c, datetime) and c.fold for c in cells) == (zone == "Europe/Berlin")
    for entity, name in FIELDS:
        parser = FIELD_TYPES[entity].get(name)
        for sql, cell in zip(VALUES, cells, strict=True):
            native = parse_native(name, cell, parser, _cell_text)
            textual = parse_field(name, _cell_text(cell).strip(), parser)
            # repr: the same value with the same tzinfo and fold, not only the same instant
            assert repr(native) == repr(textual), (zone, name, sql)
            assert native == textual


def _typed_tables(conn: Any, crm: Path) -> None:
    """The CSV CRM of test_screens in PostgreSQL: every date in each column type it fits."""
    conn.execute(text("DROP TABLE IF EXISTS contacts, orders"))
    conn.execute(
        text(
            "CREATE TABLE contacts (n serial, id text, email text, born date, born_text text,"
            " tz text, opt_in boolean)"
        )
    )
    conn.execute(
        text(
            "CREATE TABLE orders (n serial, id text, contact text, at_tz timestamptz,"
            " at_naive timestamp, at_date date, at_text text)"
        )
    )
    with (crm / "customers.csv").open(newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            born = _usable(row["birthday"], "date")
            conn.execute(
                text("INSERT INTO contacts (id, email, born, born_text, tz, opt_in)"
                     " VALUES (:id, :email, :born, :text, :tz, true)"),
                {"id": row["id"], "email": row["email"], "born": born,
                 "text": row["birthday"], "tz": row["timezone"]},
            )  # fmt: skip
    with (crm / "purchases.csv").open(newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            at = _usable(row["purchased_at"], "timestamptz")
            conn.execute(
                text(
                    "INSERT INTO orders (id, contact, at_tz, at_naive, at_date, at_text) VALUES"
                    " (:id, :contact, CAST(:at AS timestamptz),"
                    " CAST(CAST(:at AS timestamptz) AT TIME ZONE 'UTC' AS timestamp),"
                    " CAST(:day AS date), :text)"
                ),
                {"id": row["id"], "contact": row["customer_id"], "at": at,
                 "day": at and at[:10], "text": row["purchased_at"]},
            )  # fmt: skip


def _usable(value: str, kind: str) -> str | None:
    """``value`` if it fits a ``kind`` column (the CRM's garbage stays in the text columns)."""
    try:
        (datetime if kind == "timestamptz" else date).fromisoformat(value)
    except ValueError:
        return None
    return value


#: (birthday column, purchase date column) per mapping: every column type, and text.
COLUMNS = [
    ("born", "at_tz"),
    ("born", "at_naive"),
    ("born", "at_date"),
    ("born_text", "at_text"),
]


def _mapping(folder: Path, born: str, at: str) -> Path:
    path = folder / f"queries-{at}.yaml"
    path.write_text(
        "customer:\n"
        f"  query: SELECT id, email, {born} AS birthday, tz AS timezone, opt_in AS email_opt_in"
        " FROM contacts ORDER BY n\n"
        "purchase:\n"
        f"  query: SELECT id, contact AS customer_id, {at} AS purchased_at,"
        f" {at} AS delivered_at FROM orders ORDER BY n\n",
        encoding="utf-8",
    )
    return path


def _export(source: SqlSource, folder: Path) -> CsvSource:
    """What the text path reads: each row of the mapping's queries written as CSV text."""
    folder.mkdir()
    for entity, name in (("customer", "customers"), ("purchase", "purchases")):
        with source.engine.connect() as conn:
            result = conn.execute(text(source.mapping.of(entity).query))
            rows = [list(result.keys())] + [[_cell_text(c) for c in row] for row in result]
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(rows)
    return CsvSource(folder)


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
@pytest.mark.parametrize("now_text", NOWS)
def test_screened_sql_pass_plans_what_the_text_path_plans(
    server: str, tmp_path: Path, zone: str, now_text: str
) -> None:
    now = datetime.fromisoformat(now_text).astimezone(UTC)
    _write_crm(tmp_path / "crm", now)
    catalog = _catalog(tmp_path / "rules")
    engine = create_engine(server)
    with engine.begin() as conn:
        _typed_tables(conn, tmp_path / "crm")
    engine.dispose()
    utc = ZoneInfo("UTC")
    for born, at in COLUMNS:
        source = SqlSource(_in_zone(server, zone), load_mapping(_mapping(tmp_path, born, at)))
        try:
            exported = _export(source, tmp_path / f"export-{at}")
            screened = _summary(list(plan(catalog, source, now, default_zone=utc, company={})))
            unscreened = [
                item
                for rule in catalog
                for record in source.iter_records(rule.trigger.spec.entity)
                for item in plan_subject(
                    rule, Related(rule, record, source), now, default_zone=utc, company={}
                )
            ]
            as_text = list(plan(catalog, exported, now, default_zone=utc, company={}))
        finally:
            source.close()
        assert screened == _summary(as_text), (born, at)
        assert screened == _summary(unscreened), (born, at)
        assert screened, (born, at)  # the grid has due records and skips in every variant


def test_a_pass_that_stops_early_leaves_the_connection_usable(server: str, tmp_path: Path) -> None:
    """psycopg streams the rows; a pass that stops early (an error in a rule, a shutdown)
    cancels the rest before the connection goes back to the pool."""
    mapping = tmp_path / "queries.yaml"
    mapping.write_text(
        "customer:\n  query: SELECT n AS id FROM generate_series(1, 500000) AS n\n",
        encoding="utf-8",
    )
    source = SqlSource(server, load_mapping(mapping), chunk_rows=100)
    try:
        assert source.streams
        records = source.iter_records("customer")
        assert [next(records).id for _ in range(3)] == ["1", "2", "3"]
        records.close()
        assert source.engine.pool.checkedout() == 0
        assert source.get("customer", "7") is not None  # a pooled connection that works
        assert sum(1 for _ in source.iter_records("customer")) == 500000
    finally:
        source.close()


def test_an_error_after_the_first_rows_reaches_the_pass(server: str, tmp_path: Path) -> None:
    mapping = tmp_path / "queries.yaml"
    mapping.write_text(  # the database fails on row 2500, long after the first chunk
        "customer:\n  query: SELECT n AS id, 1 / (n - 2500) AS x"
        " FROM generate_series(1, 3000) AS n\n",
        encoding="utf-8",
    )
    source = SqlSource(server, load_mapping(mapping), chunk_rows=100)
    seen = 0
    try:
        with pytest.raises(SourceError, match="division by zero"):
            for _ in source.iter_records("customer"):
                seen += 1
        assert seen == 2400  # every row of the chunks before the failing one, then the error
        assert source.engine.pool.checkedout() == 0
        assert source.get("customer", "7") is not None
    finally:
        source.close()


def test_the_streamed_statement_is_the_one_sqlalchemy_sends(server: str, tmp_path: Path) -> None:
    """A literal ``%``, an escaped colon and ``%%`` mean what they mean through SQLAlchemy."""
    mapping = tmp_path / "queries.yaml"
    mapping.write_text(
        "customer:\n  query: SELECT 1 AS id, 'a%' AS a, 'at \\:noon' AS b, '%%' AS c\n",
        encoding="utf-8",
    )
    source = SqlSource(server, load_mapping(mapping))
    try:
        streamed = [dict(r.fields) for r in source.iter_records("customer")]
        got = source.get("customer", "1")  # through SQLAlchemy's own execution
        assert got is not None
        assert streamed == [dict(got.fields)]
        assert streamed[0]["a"] == "a%" and streamed[0]["b"] == "at :noon"
        assert streamed[0]["c"] == "%%"
    finally:
        source.close()


def test_an_abandoned_pass_collected_in_a_cycle_frees_its_connection(
    server: str, tmp_path: Path
) -> None:
    """A pass left suspended inside a reference cycle (a failed test's traceback, say) is
    collected in any order: the pool's rollback must not wait on the stream it interrupts."""
    mapping = tmp_path / "queries.yaml"
    mapping.write_text(
        "customer:\n  query: SELECT n AS id FROM generate_series(1, 500000) AS n\n",
        encoding="utf-8",
    )
    source = SqlSource(server, load_mapping(mapping), chunk_rows=100)
    try:
        records = source.iter_records("customer")
        assert next(records).id == "1"
        cycle: list[Any] = [records]
        cycle.append(cycle)
        del records, cycle
        gc.collect()
        assert source.engine.pool.checkedout() == 0
        assert source.get("customer", "7") is not None
    finally:
        source.close()
