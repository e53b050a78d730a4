"""CRM data in a SQL database (PostgreSQL, MySQL/MariaDB, SQLite) through SQLAlchemy 2.

``CRM_SOURCE`` is a SQLAlchemy URL (``postgresql+psycopg://crm_reader@db/crm``,
``mysql+pymysql://…``, ``sqlite:///crm.db``) and ``CRM_SOURCE_QUERIES`` the operator's mapping
file (:mod:`worker.sources.mapping`) that turns the CRM's own tables into our field names.

* Streaming: a pass reads an entity in chunks of :data:`~worker.constants.SQL_FETCH_CHUNK_ROWS`
  rows, never the whole table at once: with psycopg 3 through its ``stream`` (the database
  keeps sending while the pass screens; :meth:`SqlSource._streamed`), with other drivers
  through a server-side cursor (``stream_results``). :meth:`SqlSource.get` is one query by id
  (an indexed lookup when ``id`` is a key column).
* Typing: every value is typed as :func:`~worker.sources.schema.to_record` types the text a
  CSV export would hold for it (dates ISO 8601, flags ``true``/``false``, decimals as written),
  so the CSV and SQL sources give identical records and identical plans for the same data;
  dates and datetimes, which a pass screens on every row, skip the text with the same result
  (:func:`~worker.sources.schema.parse_native`).
* Read-only: every connection is made read-only before first use (PostgreSQL and MySQL:
  session transaction mode; SQLite: ``PRAGMA query_only``), on top of the mapping file's
  SELECT-only check. Still, give the worker a database user that can only read.
* Failures: an unreachable database raises :class:`~worker.errors.SourceUnavailableError`
  (a pass retries next interval, a delivery is retried later); a broken query raises
  :class:`~worker.errors.SourceError` naming the mapping file. The URL appears only with its
  password masked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Generator, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

from worker.constants import PLAN_LOOKUP_CHUNK, SQL_CONNECT_TIMEOUT_S, SQL_FETCH_CHUNK_ROWS
from worker.errors import SourceError, SourceUnavailableError
from worker.sources.base import Changes, Record, RowKeep, RowSkip
from worker.sources.lazy import RowLayout
from worker.sources.mapping import QueryMapping
from worker.sources.schema import to_record

log = logging.getLogger(__name__)

#: Makes a new connection read-only for its whole life, per dialect.
_READ_ONLY: Mapping[str, str] = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}
#: Drivers whose connect timeout is a ``connect_timeout`` argument (seconds).
_CONNECT_TIMEOUT_DRIVERS = frozenset({"psycopg", "psycopg2", "pymysql", "mysqldb"})


def is_database_url(spec: str) -> bool:
    """Does ``CRM_SOURCE`` name a database (``dialect[+driver]://…``) rather than a folder?"""
    scheme = spec.partition("://")[0]
    return "://" in spec and scheme.split("+")[0] in _READ_ONLY


def masked(spec: str | URL) -> str:
    """The URL with its password replaced by ``***`` (for logs and errors)."""
    try:
        url = make_url(spec)
    except ArgumentError:
        return f"{str(spec).partition('://')[0]}://…"
    return url.render_as_string(hide_password=True)


class SqlSource:
    """Records from a SQL database, one read-only mapping query per entity."""

    def __init__(
        self, url: str, mapping: QueryMapping, *, chunk_rows: int = SQL_FETCH_CHUNK_ROWS
    ) -> None:
        self.mapping = mapping
        self.chunk_rows = chunk_rows
        self.display = masked(url)
        try:
            parsed = make_url(url)
            self._password = parsed.password
            connect_args: dict[str, Any] = {}
            if parsed.get_driver_name() in _CONNECT_TIMEOUT_DRIVERS:
                connect_args["connect_timeout"] = SQL_CONNECT_TIMEOUT_S
            # pool_pre_ping: a connection the database dropped (restart, failover) is replaced
            # before use instead of failing the first query after the outage.
            self.engine: Engine = create_engine(
                parsed, pool_pre_ping=True, connect_args=connect_args
            )
        except (ArgumentError, NoSuchModuleError) as exc:
            raise SourceError(
                f"CRM_SOURCE {self.display} is not a usable database URL ({type(exc).__name__}); "
                "write e.g. postgresql+psycopg://user@host/db"
            ) from None
        except ImportError as exc:
            raise SourceError(
                f"CRM_SOURCE {self.display}: the database driver is not installed ({exc.name})"
            ) from None
        dialect = self.engine.dialect
        #: psycopg 3 streams a pass's rows in chunks as the database sends them (see
        #: :meth:`_streamed`); other drivers go through SQLAlchemy's server-side cursor.
        self.streams = dialect.driver == "psycopg"
        statement = _READ_ONLY.get(dialect.name)
        if statement is not None:
            event.listen(self.engine, "connect", _read_only_hook(statement))
        if self.streams:
            event.listen(self.engine, "reset", _end_stream)
        #: Entities whose change column turned out unusable (neither a timestamp, ISO-8601
        #: text nor an integer version): read at every pass instead, with one warning.
        self._unfollowed: set[str] = set()
        self._probed: set[str] = set()

    def iter_records(self, entity: str, keep: RowKeep | None = None) -> Iterator[Record]:
        """Every usable record, streamed in chunks (never the whole table at once)."""
        queries = self.mapping.of(entity)
        where = f"{self.mapping.path.name} {entity}"
        with self._connect() as conn:
            try:
                if self.streams:
                    names, rows = self._streamed(conn, queries.query)
                else:
                    # Result.yield_per, not the execution option: SQLAlchemy 2.1 ignores the
                    # option for text() statements and grows its buffer from 1 row instead.
                    result = (
                        conn.execution_options(stream_results=True)
                        .execute(text(queries.query))
                        .yield_per(self.chunk_rows)
                    )
                    keys = result.keys()  # a Result: iterating it would fetch rows
                    names, rows = (lambda: [str(name) for name in keys]), iter(result)
                try:
                    yield from self._records(entity, where, names, rows, keep)
                finally:
                    close = getattr(rows, "close", None)
                    if close is not None:
                        close()  # psycopg: cancel what is still coming before the reuse
            except SQLAlchemyError as exc:
                raise self._failure(exc, f"{where} query") from None

    def _records(
        self,
        entity: str,
        where: str,
        names: Callable[[], list[str]],
        rows: Iterator[Sequence[Any]],
        keep: RowKeep | None,
    ) -> Iterator[Record]:
        """The records over ``rows`` (``names``: their columns, known once a row came)."""
        # As from CSV: a value is typed only when its field is read (a pass reads one date of
        # most rows), with the same values and problems as its text would give.
        layout: RowLayout | None = None
        tests = None
        row_name = f"{where} row {{}}".format
        n = 0

        def row_where() -> str:  # one function, not one per row: called for a skipped row
            return row_name(n)

        for row in rows:
            n += 1
            if layout is None:
                layout = RowLayout(entity, names(), _cell_text)
                tests = layout.tests(keep)
            record = layout.record(row, row_where, tests)
            if record is None:
                continue
            if isinstance(record, RowSkip):
                log.warning("%s: row skipped: %s", record.where, record.reason)
                continue
            yield record

    def _streamed(
        self, conn: Connection, query: str
    ) -> tuple[Callable[[], list[str]], Iterator[Sequence[Any]]]:
        """The rows of ``query`` through psycopg's ``stream`` (and their column names, known
        with the first row): the database sends rows while the pass screens the ones it has,
        in chunks of ``chunk_rows``, as plain tuples. A server-side cursor waits for each
        FETCH, so the database idled while the pass worked and the pass while it fetched. The
        same connection, so the same read-only session and transaction handling; the
        statement is the very text SQLAlchemy sends for ``text(query)``."""
        statement = str(text(query).compile(dialect=self.engine.dialect))
        driver = conn.connection.driver_connection
        assert driver is not None  # a checked-out connection has its driver connection
        cursor = driver.cursor()

        def names() -> list[str]:
            return [column.name for column in cursor.description or ()]

        rows = cursor.stream(statement, {}, size=self.chunk_rows)
        # psycopg holds the connection's lock while a stream is open: whoever returns the
        # connection to the pool must end the stream first (_end_stream), even when a pass
        # left suspended is collected after its connection.
        conn.connection.info[_STREAM] = rows
        return names, _raised_as_sqlalchemy(rows, statement, driver.Error)

    def get(self, entity: str, record_id: str) -> Record | None:
        """One record by id, read fresh; ``None`` when no row has that id."""
        queries = self.mapping.of(entity)
        where = f"{self.mapping.path.name} {entity} id {record_id}"
        with self._connect() as conn:
            try:
                row = conn.execute(text(queries.get), {"id": record_id}).first()
            except DataError:
                return None  # an id the column cannot hold (text for an integer key)
            except SQLAlchemyError as exc:
                raise self._failure(exc, f"{self.mapping.path.name} {entity}.get") from None
        if row is None:
            return None
        record = to_record(entity, _as_text(row._mapping), where)
        return None if isinstance(record, RowSkip) else record

    def get_many(self, entity: str, record_ids: Collection[str]) -> dict[str, Record | None]:
        """Records by id, read fresh: one query for all of them (the mapping's query filtered
        by ``id IN (…)``) when the mapping file leaves ``get`` to the worker; otherwise, and for
        any id that query does not answer as written, ``get`` each."""
        queries = self.mapping.of(entity)
        ids = list(dict.fromkeys(record_ids))
        found: dict[str, Record | None] = {}
        if queries.get_many is not None and ids:
            where = f"{self.mapping.path.name} {entity}"
            statement = text(queries.get_many).bindparams(bindparam("ids", expanding=True))
            try:
                with self._connect() as conn:
                    rows = conn.execute(statement, {"ids": ids}).all()
            except DataError:
                rows = []  # an id the column cannot hold: each on its own, as get treats it
            except SQLAlchemyError as exc:
                raise self._failure(exc, f"{where}.get") from None
            wanted = set(ids)
            for row in rows:
                raw = _as_text(row._mapping)
                record_id = raw.get("id")
                if record_id in wanted and record_id not in found:
                    record = to_record(entity, raw, f"{where} id {record_id}")
                    found[record_id] = None if isinstance(record, RowSkip) else record
        # An id the batch did not return as written (``042`` for 42, or gone): as get says.
        return {i: found[i] if i in found else self.get(entity, i) for i in ids}

    def follows(self, entity: str) -> bool:
        """Does the mapping name a usable change column (``changed_since``) for ``entity``?
        The first time, its largest value is read once: a column holding neither timestamps,
        ISO-8601 text nor integers is warned about once and the entity read at every pass."""
        queries = self.mapping.entities.get(entity)
        if queries is None or queries.changed_since is None or entity in self._unfollowed:
            return False
        if entity not in self._probed:
            try:
                self.watermark(entity)
            except SourceError:
                return True  # the database or the query fails: the pass reports it
            self._probed.add(entity)
        return entity not in self._unfollowed

    def watermark(self, entity: str) -> str | None:
        """The largest value of the entity's change column now (one indexed lookup)."""
        queries = self.mapping.of(entity)
        assert queries.latest is not None, "watermark() of an entity without changed_since"
        where = f"{self.mapping.path.name} {entity}.changed_since"
        with self._connect() as conn:
            try:
                latest = conn.execute(text(queries.latest)).scalar()
            except SQLAlchemyError as exc:
                raise self._failure(exc, where) from None
        return self._mark(entity, latest)

    def changed(
        self, entity: str, since: str | None, *, overlap: timedelta = timedelta(0)
    ) -> Changes | None:
        """Records whose change column is after ``since`` less ``overlap`` (a transaction that
        committed late, a CRM host whose clock runs behind): the query filtered by
        ``q.<column> > :since``, an index range scan when the column is indexed. An integer
        column is a version the CRM increases on every write: no overlap is taken from it.
        None when the column holds values that cannot be followed (see :meth:`follows`)."""
        queries = self.mapping.of(entity)
        assert queries.changed is not None and queries.changed_all is not None
        where = f"{self.mapping.path.name} {entity}.changed_since"
        params: dict[str, Any] = {}
        statement = queries.changed_all
        if since is not None:
            statement = queries.changed
            params["since"] = _since_param(since, overlap)
        with self._connect() as conn:
            try:
                rows = conn.execute(text(statement), params).all()
            except SQLAlchemyError as exc:
                raise self._failure(exc, where) from None
        records = []
        latest: Any = None
        column = queries.changed_since
        assert column is not None
        for row in rows:
            value = row._mapping.get(column)
            try:
                if value is not None and (latest is None or value > latest):
                    latest = value
            except TypeError:
                self._unfollow(entity, "values of different types")
            raw = _as_text(row._mapping)
            record = to_record(entity, raw, f"{where} id {raw.get('id')}")
            if not isinstance(record, RowSkip):
                records.append(record)
        mark = self._mark(entity, latest) if latest is not None else None
        if entity in self._unfollowed:
            return None
        if since is not None and (mark is None or _before(mark, since)):
            mark = since
        return Changes(records, mark)

    def _mark(self, entity: str, value: object) -> str | None:
        """``value`` of the change column as a watermark; None, with one warning naming the
        mapping file and column, when it cannot be one (the entity is then read every pass)."""
        try:
            return _watermark_text(value)
        except ValueError as exc:
            self._unfollow(entity, str(exc))
            return None

    def _unfollow(self, entity: str, holds: str) -> None:
        if entity in self._unfollowed:
            return
        self._unfollowed.add(entity)
        log.warning(
            "%s: %s.changed_since names column %s, which holds %s; %s records are read at "
            "every pass instead of planned ahead. Name a timestamp column (or ISO-8601 text, "
            "or an integer version) the CRM sets on every write, or remove changed_since",
            self.mapping.path,
            entity,
            self.mapping.of(entity).changed_since,
            holds,
            entity,
        )

    def records_of(self, entity: str, customer_ids: Collection[str]) -> list[Record]:
        """The entity's records of these customers: one query (``q.customer_id IN (…)``),
        index lookups when the CRM indexes the customer column."""
        queries = self.mapping.of(entity)
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return []
        where = f"{self.mapping.path.name} {entity}"
        statement = text(queries.of_customers).bindparams(bindparam("ids", expanding=True))
        rows: list[Any] = []
        try:
            with self._connect() as conn:
                # A few hundred ids per query: with thousands in one list PostgreSQL's planner
                # prefers a sequential scan of the whole table to the index on the column.
                for start in range(0, len(ids), PLAN_LOOKUP_CHUNK):
                    chunk = {"ids": ids[start : start + PLAN_LOOKUP_CHUNK]}
                    rows.extend(conn.execute(statement, chunk).all())
        except DataError:
            return []  # ids the column cannot hold: no records of theirs
        except SQLAlchemyError as exc:
            raise self._failure(exc, f"{where} by customer") from None
        found = []
        for row in rows:
            raw = _as_text(row._mapping)
            record = to_record(entity, raw, f"{where} id {raw.get('id')}")
            if not isinstance(record, RowSkip):
                found.append(record)
        return found

    def columns(self, entity: str) -> frozenset[str]:
        """Field names the entity's query selects (the query runs with no rows)."""
        queries = self.mapping.of(entity)
        with self._connect() as conn:
            try:
                result = conn.execute(text(f"SELECT * FROM ({queries.query}) AS q WHERE 1 = 0"))
                return frozenset(result.keys())
            except SQLAlchemyError as exc:
                raise self._failure(exc, f"{self.mapping.path.name} {entity} query") from None

    def close(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def _failure(self, exc: SQLAlchemyError, where: str) -> SourceError:
        if isinstance(exc, (OperationalError, InterfaceError)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        ):
            return self._unavailable(exc)
        return SourceError(
            f"{where} failed on {self.display}: {self._reason(exc)}; fix the query in "
            f"{self.mapping.path}"
        )

    def _unavailable(self, exc: SQLAlchemyError) -> SourceUnavailableError:
        return SourceUnavailableError(
            f"cannot reach the CRM database {self.display}: {self._reason(exc)}; "
            "check CRM_SOURCE and that the database is up"
        )

    def _reason(self, exc: SQLAlchemyError) -> str:
        """The driver's first line, never the password (libpq echoes parts of the DSN)."""
        original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        lines = str(original).strip().splitlines()
        reason = lines[0] if lines else type(original).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason


def _read_only_hook(statement: str) -> Any:
    def make_read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        # psycopg and pymysql open a transaction for the SET: commit it, or the rollback when
        # the connection returns to the pool would undo the session setting.
        dbapi_connection.commit()

    return make_read_only


#: Where a pooled connection keeps the psycopg stream it is busy with (``Connection.info``).
_STREAM = "crm_worker_stream"


def _end_stream(_dbapi_connection: Any, record: Any, _state: Any) -> None:
    """Pool reset hook: close the connection's open stream (psycopg cancels the query and
    releases the connection's lock) before the pool rolls the connection back."""
    rows = record.info.pop(_STREAM, None)
    if rows is not None:
        rows.close()


def _raised_as_sqlalchemy(
    rows: Generator[Sequence[Any], None, None], statement: str, errors: type[Exception]
) -> Generator[Sequence[Any], None, None]:
    """``rows`` with the driver's errors raised as SQLAlchemy raises them for a query (so an
    unreachable database is :class:`SourceUnavailableError`, as elsewhere). Closing this
    closes ``rows``: psycopg then cancels the query and reads what was already sent."""
    try:
        yield from rows
    except errors as exc:
        raise DBAPIError.instance(statement, {}, exc, errors) from None
    finally:
        rows.close()


_INT_MARK = "int:"
_TEXT_MARK = "text:"


def _watermark_text(value: object) -> str | None:
    """A change column's value as the text a watermark is kept in: a timestamp in ISO 8601,
    text holding one (SQLite keeps DATETIME as text) as ``text:`` and the text as stored, an
    integer version as ``int:`` and the number. ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time()).isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{_INT_MARK}{value}"
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"text that is not an ISO-8601 timestamp ({value[:40]!r})") from None
        return f"{_TEXT_MARK}{value}"
    raise ValueError(f"{type(value).__name__} values ({str(value)[:40]!r})")


def _order(mark: str) -> int | datetime:
    """A watermark as a value to compare watermarks of one column by."""
    if mark.startswith(_INT_MARK):
        return int(mark.removeprefix(_INT_MARK))
    return datetime.fromisoformat(mark.removeprefix(_TEXT_MARK))


def _before(mark: str, since: str) -> bool:
    """Is watermark ``mark`` before ``since``? (Never, when the column changed kind: the
    new value is kept.)"""
    a, b = _order(mark), _order(since)
    if isinstance(a, int) and isinstance(b, int):
        return a < b
    if isinstance(a, datetime) and isinstance(b, datetime):
        try:
            return a < b
        except TypeError:  # one with an offset, one without
            return False
    return False


def _since_param(mark: str, overlap: timedelta) -> int | str | datetime:
    """The ``:since`` parameter for a watermark: the overlap taken from a timestamp; a text
    column compared as text written as its values are (``2026-12-06 05:00:00``); an integer
    version as it is (a version is no clock: no overlap)."""
    if mark.startswith(_INT_MARK):
        return int(mark.removeprefix(_INT_MARK))
    if mark.startswith(_TEXT_MARK):
        written = mark.removeprefix(_TEXT_MARK)
        earlier = datetime.fromisoformat(written) - overlap
        return earlier.isoformat(sep="T" if written[10:11] == "T" else " ")
    return datetime.fromisoformat(mark) - overlap


def _as_text(row: Mapping[Any, Any]) -> dict[str, str | None]:
    return {str(name): _text(value) for name, value in row.items()}


def _cell_text(value: object) -> str:
    kind = type(value)  # ids and text columns first: every row's id is read
    if kind is str:
        return cast(str, value)
    if kind is int:
        return str(value)
    return _text(value) or ""


def _text(value: object) -> str | None:
    """A database value as the text a CSV export holds, so both are typed the same way."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        # A datetime without offset is UTC, as in CSV exports (timestamp without time zone).
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
