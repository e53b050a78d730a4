"""A mapping's change column (``changed_since``) of any usual kind: a timestamp, ISO-8601
text (SQLite keeps DATETIME as text), an integer row version; anything else is warned about
once and its entity read at every pass, never a pass that stops (real SQLite files, real
PostgreSQL, real Redis)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text

from tests.conftest import REPO
from tests.test_sql_source import PASSWORD, _reachable, _scratch, load_demo
from worker.localtime import parse_instant
from worker.planning.plan import PlannedDelivery, plan
from worker.sources.mapping import load_mapping
from worker.sources.sql import SqlSource

NOW = parse_instant("2026-03-14T10:00:00Z")
QUERIES = REPO / "examples" / "sql" / "queries.yaml"


def _mapping(tmp_path: Path) -> Path:
    """The demo mapping, the customer's change column ``changed`` added."""
    yaml_text = QUERIES.read_text(encoding="utf-8")
    yaml_text = yaml_text.replace(
        "tier          AS loyalty_tier\n      FROM crm_contacts\n",
        "tier          AS loyalty_tier,\n           changed\n      FROM crm_contacts\n"
        "  changed_since: changed\n",
    )
    assert "changed_since: changed" in yaml_text
    path = tmp_path / "queries.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


def _sqlite(tmp_path: Path, column_type: str, values: str) -> str:
    """The demo CRM in a SQLite file, its contacts' ``changed`` set by SQL ``values``."""
    file = tmp_path / "crm.db"
    load_demo.load(f"sqlite:///{file}")
    with sqlite3.connect(file) as conn:
        conn.execute(f"ALTER TABLE crm_contacts ADD COLUMN changed {column_type}")
        conn.execute(f"UPDATE crm_contacts SET changed = {values}")
    return f"sqlite:///{file}"


def _set(url: str, contact_id: int, value: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE crm_contacts SET changed = {value} WHERE contact_id = :id"),
                     {"id": contact_id})  # fmt: skip
    engine.dispose()


def test_sqlite_datetime_text_is_followed(tmp_path: Path) -> None:
    # Contact n changed n minutes before midnight, as SQLite writes DATETIME text.
    url = _sqlite(
        tmp_path, "DATETIME", "datetime('2026-03-14 00:00:00', -contact_id || ' minutes')"
    )
    source = SqlSource(url, load_mapping(_mapping(tmp_path)))
    assert source.follows("customer")
    mark = source.watermark("customer")
    assert mark is not None and mark.endswith("2026-03-13 23:59:00")
    found = source.changed("customer", mark)
    assert found is not None and found.records == [] and found.watermark == mark
    # The overlap reads again what changed in the last 5 minutes before the watermark.
    found = source.changed("customer", mark, overlap=timedelta(minutes=5))
    assert found is not None and sorted(r.id for r in found.records) == ["1", "2", "3", "4", "5"]
    _set(url, 1000, "'2026-03-14 06:00:00'")
    found = source.changed("customer", mark)
    assert found is not None and [r.id for r in found.records] == ["1000"]
    assert found.watermark is not None and found.watermark.endswith("2026-03-14 06:00:00")
    again = source.changed("customer", found.watermark)
    assert again is not None and again.records == []


def test_an_integer_row_version_is_followed_without_overlap(tmp_path: Path) -> None:
    url = _sqlite(tmp_path, "INTEGER", "contact_id")
    source = SqlSource(url, load_mapping(_mapping(tmp_path)))
    assert source.follows("customer")
    mark = source.watermark("customer")
    assert mark is not None
    top = int(mark.split(":")[-1])
    _set(url, 3, str(top + 1))
    found = source.changed("customer", mark, overlap=timedelta(hours=1))
    assert found is not None and [r.id for r in found.records] == ["3"]
    later = source.changed("customer", found.watermark, overlap=timedelta(hours=1))
    assert later is not None and later.records == []


@pytest.mark.parametrize(
    ("column_type", "values", "holds"),
    [("REAL", "contact_id + 0.5", "float"), ("TEXT", "'yesterday'", "'yesterday'")],
)
def test_an_unusable_change_column_is_warned_about_once_and_read_every_pass(
    tmp_path: Path,
    make_runtime: Any,
    caplog: pytest.LogCaptureFixture,
    column_type: str,
    values: str,
    holds: str,
) -> None:
    mapping = _mapping(tmp_path)
    source = SqlSource(_sqlite(tmp_path, column_type, values), load_mapping(mapping))
    runtime = make_runtime(source=source)
    caplog.set_level(logging.INFO)
    for minutes in (0, 1, 2):
        report = runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=minutes))
        if minutes == 0:
            assert report.queued, "the pass ran and sent what is due"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(mapping) in warnings[0] and "column changed" in warnings[0]
    assert holds in warnings[0] and "remove changed_since" in warnings[0]
    assert "scheduler pass failed" not in caplog.text
    assert not source.follows("customer")


@pytest.mark.parametrize(("column_type", "values"), [("DATETIME", "'2026-03-14 05:00:00'"),
                                                     ("INTEGER", "contact_id")])  # fmt: skip
def test_planned_passes_over_sqlite_claim_what_a_full_read_finds(
    tmp_path: Path, make_runtime: Any, column_type: str, values: str
) -> None:
    source = SqlSource(_sqlite(tmp_path, column_type, values), load_mapping(_mapping(tmp_path)))
    runtime = make_runtime(source=source)
    runtime.catalog.refresh()
    for minutes in (0, 30, 24 * 60):
        now = NOW + timedelta(minutes=minutes)
        due = {
            item.key
            for item in plan(runtime.catalog, source, now, default_zone=runtime.default_zone,
                             company=runtime.settings.company)
            if isinstance(item, PlannedDelivery)
        }  # fmt: skip
        runtime.scheduler.run_planned_pass(now)
        states = runtime.ledger.states(due)
        assert "" not in states.values(), (now, [k for k, s in states.items() if not s])
    assert runtime.scheduler.ahead.last_kind == "changes", "passes after the first follow changes"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin = os.environ.get(
        "CRM_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/postgres"
    )
    if not _reachable(admin):
        pytest.skip(f"no PostgreSQL at {sqlalchemy.make_url(admin).render_as_string()}")
    name = f"pafix_{os.getpid()}_change"
    with _scratch(admin, name):
        url = admin.rsplit("/", 1)[0] + "/" + name
        load_demo.load(url)
        yield url


def test_postgresql_bigint_versions_and_text_timestamps_are_followed(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE crm_contacts ADD COLUMN changed bigint"))
        conn.execute(text("UPDATE crm_contacts SET changed = 7"))
    source = SqlSource(postgres_url, load_mapping(_mapping(tmp_path)))
    assert source.follows("customer")
    mark = source.watermark("customer")
    assert mark == "int:7"
    _set(postgres_url, 5, "8")
    found = source.changed("customer", mark)
    assert found is not None and [r.id for r in found.records] == ["5"]
    source.close()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE crm_contacts DROP COLUMN changed"))
        conn.execute(text("ALTER TABLE crm_contacts ADD COLUMN changed text"))
        conn.execute(text("UPDATE crm_contacts SET changed = '2026-03-14T05:00:00'"))
    engine.dispose()
    source = SqlSource(postgres_url, load_mapping(_mapping(tmp_path)))
    mark = source.watermark("customer")
    assert mark is not None
    _set(postgres_url, 6, "'2026-03-14T06:00:00'")
    found = source.changed("customer", mark)
    assert found is not None and [r.id for r in found.records] == ["6"]
    source.close()
