"""The SQL source against real databases: SQLite always, PostgreSQL and MariaDB when reachable.

The demo CSV data is loaded into the demo CRM's own schema (``examples/sql``) and read back
through ``examples/sql/queries.yaml``; everything the worker plans from it must be exactly what
it plans from the CSV files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text

from tests.conftest import REPO, free_port
from worker.channels import MemoryChannel
from worker.constants import MAX_DELIVERY_ATTEMPTS
from worker.delivery.batch import deliver_batch, deliver_one
from worker.errors import SourceError, SourceUnavailableError
from worker.localtime import parse_instant, utc_now
from worker.planning.plan import PlannedDelivery, Skip, plan
from worker.planning.scheduler import LeaderLock, run_scheduler
from worker.rules.catalog import RuleCatalog
from worker.sources import CsvSource, InMemorySource, SqlSource, open_source
from worker.sources.mapping import load_mapping

QUERIES = REPO / "examples" / "sql" / "queries.yaml"
INSTANTS = [
    "2026-03-14T10:00:00Z",
    "2026-05-26T09:30:00Z",
    "2027-02-28T12:00:00Z",
    "2028-02-29T09:30:00Z",
    "2026-11-24T23:30:00Z",
]
#: PostgreSQL accepts any password under trust auth: the URLs carry one, so tests can check
#: that it never shows.
PASSWORD = "pw-Never-Shown-42"


def _load_demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_demo", REPO / "examples/sql/load_demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load_demo = _load_demo_module()


def _reachable(url: str) -> bool:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sqlalchemy.exc.SQLAlchemyError:
        return False


@dataclasses.dataclass
class Database:
    """A scratch database: ``url`` for the worker, ``admin`` to create/drop around it."""

    url: str
    admin: str
    name: str

    def sibling(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def _scratch(admin: str, name: str) -> Iterator[None]:
    """A new, empty database ``name``, dropped afterwards (even with connections still open)."""
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield
    finally:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Database]:
    admin = os.environ.get(
        "CRM_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/postgres"
    )
    if not _reachable(admin):
        pytest.skip(f"no PostgreSQL at {sqlalchemy.make_url(admin).render_as_string()}")
    name = f"crm_test_sql_{os.getpid()}"
    db = Database(admin.rsplit("/", 1)[0] + "/" + name, admin, name)
    with _scratch(admin, name):
        load_demo.load(db.url)
        yield db


@pytest.fixture(scope="session")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sql') / 'crm.db'}"
    load_demo.load(url)
    return url


@pytest.fixture(scope="session")
def mariadb() -> Iterator[str]:
    admin = os.environ.get("CRM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    if not _reachable(admin):
        pytest.skip("no MySQL/MariaDB reachable")
    name = f"crm_test_sql_{os.getpid()}"
    with _scratch(admin, name):
        url = admin.rsplit("/", 1)[0] + "/" + name
        load_demo.load(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_db"))
    return str(request.getfixturevalue("postgres").url)


@pytest.fixture
def sql_source(sql_url: str) -> Iterator[SqlSource]:
    source = open_source(sql_url, QUERIES)
    assert isinstance(source, SqlSource)
    yield source
    source.close()


def _unreachable_source() -> SqlSource:
    """A PostgreSQL source at a port where nothing listens: the CRM database is down."""
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/crm"
    return SqlSource(url, load_mapping(QUERIES))


def _catalog() -> RuleCatalog:
    catalog = RuleCatalog(REPO / "rules")
    catalog.refresh()
    return catalog


def _plan(source: Any, instant: str) -> list[tuple[Any, ...]]:
    """Everything a pass at ``instant`` decides: deliveries with their context, and skips.

    Sorted: a table without ORDER BY comes back in the database's order (MariaDB: by primary
    key), and the order of a pass is no promise; what is decided is.
    """
    result: list[tuple[Any, ...]] = []
    for item in plan(
        _catalog(),
        source,
        parse_instant(instant),
        default_zone=ZoneInfo("UTC"),
        company={"name": "Shop", "address": "Street 1"},
    ):
        if isinstance(item, PlannedDelivery):
            result.append(("send", item.key, item.to, item.due_at, dict(item.context)))
        else:
            result.append(("skip", item.rule_id, item.record_id, item.reason))
    return sorted(result, key=repr)


def _write(tmp_path: Path, yaml_text: str) -> Path:
    path = tmp_path / "queries.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


def test_sql_and_csv_sources_plan_identically(sql_source: SqlSource) -> None:
    csv = CsvSource(REPO / "examples" / "crm")
    sends = 0
    for instant in INSTANTS:
        expected = _plan(csv, instant)
        assert _plan(sql_source, instant) == expected, instant
        sends += sum(1 for item in expected if item[0] == "send")
    assert sends >= 5  # the comparison covers real deliveries, not only skips


def test_mariadb_plans_like_csv(mariadb: str) -> None:
    source = open_source(mariadb, QUERIES)
    csv = CsvSource(REPO / "examples" / "crm")
    for instant in INSTANTS[:2]:
        assert _plan(source, instant) == _plan(csv, instant)
    assert source.get("purchase", "P1") == csv.get("purchase", "P1")


def test_get_by_id_reads_one_record(sql_source: SqlSource) -> None:
    csv = CsvSource(REPO / "examples" / "crm")
    for entity, record_id in [("customer", "4"), ("purchase", "P1"), ("complaint", "C3")]:
        assert sql_source.get(entity, record_id) == csv.get(entity, record_id)
    assert sql_source.get("customer", "999999") is None
    assert sql_source.get("customer", "not-a-number") is None
    assert sql_source.columns("customer") == csv.columns("customer")


def test_get_by_id_is_an_index_lookup(postgres: Database) -> None:
    """The default ``get`` (the query wrapped in a WHERE) and a written one both use the key."""
    mapping = load_mapping(QUERIES)
    engine = create_engine(postgres.url)
    try:
        with engine.connect() as conn:
            for entity, record_id in [("customer", "42"), ("purchase", "P7"), ("complaint", "C3")]:
                explained = conn.execute(
                    text(f"EXPLAIN {mapping.of(entity).get}"), {"id": record_id}
                ).scalars()
                assert "Index Scan using" in "\n".join(explained), entity
    finally:
        engine.dispose()


def test_garbage_values_are_skipped_with_reasons(sql_source: SqlSource) -> None:
    zero_date = sql_source.get("customer", "3")
    assert zero_date is not None and zero_date["birthday"] is None
    assert "'0000-00-00' is not usable" in zero_date.problems["birthday"]
    skips = [
        item
        for item in plan(
            _catalog(),
            sql_source,
            parse_instant(INSTANTS[0]),
            default_zone=ZoneInfo("UTC"),
            company={},
            customer_id="3",
            rule_ids=frozenset({"birthday-greeting"}),
        )
        if isinstance(item, Skip)
    ]
    assert [s.reason for s in skips] == [zero_date.problems["birthday"]]

    # An unknown time zone is reported and the default zone is used (customer 5, born May 26).
    mars = sql_source.get("customer", "5")
    assert mars is not None and "unknown time zone" in mars.problems["timezone"]
    planned = [
        item
        for item in plan(
            _catalog(),
            sql_source,
            parse_instant("2026-05-26T09:30:00Z"),
            default_zone=ZoneInfo("UTC"),
            company={},
            customer_id="5",
            rule_ids=frozenset({"birthday-greeting"}),
        )
        if isinstance(item, PlannedDelivery)
    ]
    assert [p.due_at for p in planned] == [datetime(2026, 5, 26, 9, 0, tzinfo=UTC)]


def test_database_types_are_typed_like_csv_text(postgres: Database, tmp_path: Path) -> None:
    """DATE, BOOLEAN, NUMERIC, TIMESTAMPTZ and TIMESTAMP columns give the records CSV text
    would."""
    mapping = _write(
        tmp_path,
        "customer:\n"
        "  query: |\n"
        "    SELECT 7 AS id, DATE '1990-05-01' AS birthday, TRUE AS email_opt_in,\n"
        "           'Europe/Berlin' AS timezone, 12.50::numeric(6,2) AS points, NULL AS locale\n"
        "complaint:\n"
        "  query: |\n"
        "    SELECT 'C9' AS id, TIMESTAMPTZ '2024-02-29 11:00+01' AS opened_at,\n"
        "           TIMESTAMP '2024-03-01 08:00' AS resolved_at\n",
    )
    source = SqlSource(postgres.url, load_mapping(mapping))
    memory = InMemorySource(
        {
            "customer": [
                {
                    "id": "7",
                    "birthday": "1990-05-01",
                    "email_opt_in": "true",
                    "timezone": "Europe/Berlin",
                    "points": "12.50",
                    "locale": None,
                }
            ],
            "complaint": [
                {
                    "id": "C9",
                    "opened_at": "2024-02-29T10:00:00Z",
                    "resolved_at": "2024-03-01T08:00:00Z",
                }
            ],
        }
    )
    try:
        customer = source.get("customer", "7")
        assert customer == memory.get("customer", "7")
        assert customer is not None and customer["birthday"] == date(1990, 5, 1)
        assert customer["email_opt_in"] is True
        complaint = source.get("complaint", "C9")
        assert complaint == memory.get("complaint", "C9")
        assert complaint is not None
        assert complaint["opened_at"] == datetime(2024, 2, 29, 10, tzinfo=UTC)
    finally:
        source.close()


def test_a_pass_streams_its_rows(postgres: Database, tmp_path: Path) -> None:
    """A pass never holds a table at once: psycopg streams the rows in chunks while the
    database is still sending the rest (80 MB here, far beyond any socket buffer)."""
    tag = f"crm-stream-{uuid.uuid4().hex[:8]}"
    mapping = _write(
        tmp_path,
        "customer:\n  query: SELECT n AS id, repeat('x', 4000) AS pad"
        " FROM generate_series(1, 20000) AS n\n",
    )
    source = SqlSource(f"{postgres.url}?application_name={tag}", load_mapping(mapping))
    admin = create_engine(postgres.admin)
    try:
        records = source.iter_records("customer")
        first = [next(records), next(records)]
        assert [r.id for r in first] == ["1", "2"]
        with admin.connect() as conn:
            state, query = conn.execute(
                text("SELECT state, query FROM pg_stat_activity WHERE application_name = :tag"),
                {"tag": tag},
            ).one()
        assert (state, query[:14]) == ("active", "SELECT n AS id"), (state, query)
        assert sum(1 for _ in records) + 2 == 20000
    finally:
        admin.dispose()
        source.close()


def test_connections_are_read_only(postgres: Database, tmp_path: Path) -> None:
    """A query that slips a write past the SELECT check is refused by the database."""
    sneaky = _write(
        tmp_path,
        "customer:\n"
        "  query: SELECT contact_id AS id FROM crm_contacts\n"
        "  get: WITH gone AS (DELETE FROM crm_contacts WHERE contact_id = :id\n"
        "    RETURNING contact_id AS id) SELECT id FROM gone\n",
    )
    source = SqlSource(postgres.url, load_mapping(sneaky))
    try:
        with pytest.raises(SourceError, match="read-only transaction"):
            source.get("customer", "1")
    finally:
        source.close()
    engine = create_engine(postgres.url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM crm_contacts")).scalar_one() == 1500
    engine.dispose()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("customer:\n  query: DELETE FROM crm_contacts\n", ":2:3: customer.query must be one"),
        ("customer:\n  query: SELECT 1 AS id; DROP TABLE x\n", "one statement"),
        ("customer:\n  query: SELECT 1 AS id\n  gett: SELECT 1\n", "unknown key 'gett'"),
        (
            "customer:\n  query: SELECT 1 AS id\n  get: SELECT 1 AS id\n",
            "must use :id (found none)",
        ),
        ("customer:\n  query: SELECT 'at :noon' AS id\n", "found :noon"),
        ("customer:\n  query: !!python/object:os.system x\n", "tag"),
        ("customer: SELECT 1\n", "write 'query: SELECT"),
    ],
)
def test_mapping_files_allow_only_single_selects(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    with pytest.raises(SourceError, match=re.escape(message)) as caught:
        load_mapping(_write(tmp_path, yaml_text))
    assert "queries.yaml:" in str(caught.value)


def test_an_escaped_colon_is_literal(sqlite_db: str, tmp_path: Path) -> None:
    mapping = _write(tmp_path, "customer:\n  query: SELECT 'x' AS id, 'at \\:noon' AS at\n")
    source = SqlSource(sqlite_db, load_mapping(mapping))
    assert [r["at"] for r in source.iter_records("customer")] == ["at :noon"]
    source.close()


def test_database_url_needs_a_mapping_and_never_shows_the_password() -> None:
    url = f"postgresql+psycopg://crm:{PASSWORD}@127.0.0.1:5432/crm"
    with pytest.raises(SourceError, match="set CRM_SOURCE_QUERIES") as caught:
        open_source(url)
    assert PASSWORD not in str(caught.value) and "crm:***@" in str(caught.value)


@pytest.mark.parametrize("dialect", ["postgresql+psycopg", "mysql+pymysql"])
def test_unreachable_database_is_transient_and_masks_credentials(
    dialect: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{dialect}://crm_reader:{PASSWORD}@127.0.0.1:{free_port()}/crm"
    source = SqlSource(url, load_mapping(QUERIES))
    for attempt in (
        lambda: list(source.iter_records("customer")),
        lambda: source.get("customer", "1"),
        lambda: source.columns("customer"),
    ):
        with pytest.raises(SourceUnavailableError) as caught:
            attempt()
        assert PASSWORD not in str(caught.value)
        assert "crm_reader:***@127.0.0.1" in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert PASSWORD not in caplog.text


def test_schema_sql_is_what_the_loader_creates() -> None:
    assert (REPO / "examples/sql/schema.sql").read_text(encoding="utf-8") == load_demo.ddl(
        "postgresql"
    )


def test_a_pass_without_the_database_retries_and_loses_nothing(
    postgres: Database, make_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRM database is missing for the first passes; once it is there, every due delivery
    is queued, and the password never reaches the log."""
    name = f"crm_test_late_{os.getpid()}"
    now = parse_instant(INSTANTS[0])
    runtime = make_runtime(source=SqlSource(postgres.sibling(name), load_mapping(QUERIES)))
    expected = [
        p[1] for p in _plan(CsvSource(REPO / "examples" / "crm"), INSTANTS[0]) if p[0] == "send"
    ]
    stop = threading.Event()
    caplog.set_level(logging.ERROR, logger="worker.planning.scheduler")
    thread = threading.Thread(
        target=run_scheduler,
        args=(runtime.scheduler, LeaderLock(runtime.redis)),
        kwargs={"interval_s": 0.05, "stop": stop, "clock": lambda: now},
    )
    thread.start()
    try:
        _wait(lambda: "retrying next interval" in caplog.text)
        with _scratch(postgres.admin, name):
            load_demo.load(postgres.sibling(name))
            _wait(lambda: set(runtime.ledger.states(expected).values()) == {"queued"})
            stop.set()
            thread.join()
            runtime.source.close()
    finally:
        stop.set()
        thread.join()
    assert expected and f"/{name}" in caplog.text and PASSWORD not in caplog.text


def test_delivery_retries_while_the_database_is_down(postgres: Database, make_runtime: Any) -> None:
    channel = MemoryChannel()
    runtime = make_runtime(source=SqlSource(postgres.url, load_mapping(QUERIES)), channel=channel)
    now = parse_instant(INSTANTS[0])
    report = runtime.scheduler.run_pass(now)
    key = report.queued[0]
    outage = dataclasses.replace(runtime.deliverer, source=_unreachable_source())
    result = deliver_one(outage, key, as_of=now, enqueued_at=now, now=now)
    assert result.outcome == "retry" and result.retry_after == timedelta(seconds=30)
    assert runtime.ledger.get(key)["state"] == "retrying"
    # A long outage outlasts the attempts a flaky relay gets; the delivery is not given up.
    # Each attempt when the backoff before it is over (an hour later: past the longest one).
    for n in range(1, MAX_DELIVERY_ATTEMPTS + 1):
        wall = utc_now()
        at = wall + timedelta(hours=n)
        assert deliver_one(outage, key, as_of=now, enqueued_at=wall, now=at).outcome == "retry"
    wall = utc_now()
    at = wall + timedelta(hours=MAX_DELIVERY_ATTEMPTS + 1)
    assert PASSWORD not in runtime.ledger.get(key)["reason"]
    again = deliver_one(runtime.deliverer, key, as_of=now, enqueued_at=wall, now=at)
    assert again.outcome == "sent" and [m.key for m in channel.sent] == [key]
    runtime.source.close()


def test_a_batch_reads_its_records_with_one_query_per_entity(
    postgres: Database, make_runtime: Any
) -> None:
    """A worker re-checks a batch of keys against records read together: one query per entity
    (and one for the customers of purchases and complaints), not one or two per key; every
    delivery is still re-checked and sent as the pass planned it."""
    channel = MemoryChannel()
    source = SqlSource(postgres.url, load_mapping(QUERIES))
    runtime = make_runtime(source=source, channel=channel)
    now = parse_instant(INSTANTS[0])
    planned = {p[1]: p[2] for p in _plan(source, INSTANTS[0]) if p[0] == "send"}
    keys = runtime.scheduler.run_pass(now).queued
    assert sorted(keys) == sorted(planned)
    entities = {key.split(":")[1] for key in keys}
    assert entities == {"customer", "purchase", "complaint"}  # the test covers all three
    selects: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    sqlalchemy.event.listen(source.engine, "before_cursor_execute", count)
    try:
        results = deliver_batch(runtime.deliverer, keys, as_of=now, enqueued_at=now, now=now)
    finally:
        sqlalchemy.event.remove(source.engine, "before_cursor_execute", count)
    assert [r.outcome for r in results] == ["sent"] * len(keys)
    assert {m.key: m.recipient for m in channel.sent} == planned
    assert len(selects) == len(entities) + 1, selects  # 15 deliveries, 24 queries before
    source.close()


def test_a_batch_whose_records_cannot_be_read_retries_every_key(
    postgres: Database, make_runtime: Any
) -> None:
    """When the batch's read fails (the CRM database is down), each key is re-checked alone
    and meets the outage itself: a refunded retry, as for a single delivery."""
    runtime = make_runtime(source=SqlSource(postgres.url, load_mapping(QUERIES)))
    now = parse_instant(INSTANTS[0])
    keys = runtime.scheduler.run_pass(now).queued
    outage = dataclasses.replace(runtime.deliverer, source=_unreachable_source())
    results = deliver_batch(outage, keys, as_of=now, enqueued_at=now, now=now)
    assert {r.outcome for r in results} == {"retry"}
    assert set(runtime.ledger.states(keys).values()) == {"retrying"}
    assert all(runtime.ledger.get(key)["attempts"] == "0" for key in keys)
    runtime.source.close()


def _wait(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    while not condition():
        if datetime.now(UTC) > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "ids",
    [
        ["4", "1", "4", "2"],  # a repeat answered once
        ["4", "999999"],  # one missing
        ["4", "not-a-number"],  # one the key column cannot hold: each through get instead
        ["04", "3"],  # written differently from the row's id: as get answers it
        [],
    ],
)
def test_get_many_reads_as_get_does(sql_source: SqlSource, ids: list[str]) -> None:
    """A pass fetches the customers of a chunk of due records in one query; each answer must
    be the one ``get`` gives for that id."""
    found = sql_source.get_many("customer", ids)
    assert found == {record_id: sql_source.get("customer", record_id) for record_id in ids}
    assert found.get("4") is None or found["4"].id == "4"
