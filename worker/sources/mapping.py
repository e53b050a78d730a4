"""The operator's SQL mapping file: one read-only query per entity, from the CRM's own schema to
the field names rules use (``CRM_SOURCE_QUERIES``).

Example (``examples/sql/queries.yaml``)::

    customer:
      query: |
        SELECT contact_id AS id, mail AS email, given_name AS first_name, …
        FROM crm_contacts
    purchase:
      query: SELECT order_no AS id, contact_id AS customer_id, … FROM crm_orders
      get: SELECT … FROM crm_orders WHERE order_no = :id   # optional

    complaint:
      query: SELECT ticket_no AS id, …, updated_at FROM crm_tickets
      changed_since: updated_at      # optional: the column that says a row changed

``query`` lists every record of the entity and must name the record's id ``id``. ``get`` fetches
one record by ``:id``; without it the query is wrapped as
``SELECT * FROM (<query>) AS q WHERE q.id = :id``, which PostgreSQL, MySQL/MariaDB and SQLite
flatten into an indexed lookup as long as ``id`` is a plain column of the table. Write ``get``
yourself when the id is computed (``CAST(…) AS id``) or the query groups rows.

``changed_since`` names a column of the query's result that the CRM sets whenever a row is
written (an ``updated_at`` timestamp, with an index on it). The scheduler then plans ahead and
reads between its full passes only the rows changed since it last looked:
``SELECT * FROM (<query>) AS q WHERE q.updated_at > :since`` (see
:mod:`worker.planning.ahead`). An entity without it is read in full every pass.

The file is read with the rule files' YAML loader (YAML 1.2, positions, no unsafe tags, duplicate
keys refused). Each statement must be one ``SELECT`` or ``WITH`` (no ``;``): a first guard, the
read-only database session is the real one (see :mod:`worker.sources.sql`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from worker.constants import MAX_QUERIES_FILE_BYTES
from worker.errors import Problem, RuleError, SourceError
from worker.rules.loader import parse_yaml

_ENTITY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_KEYS = ("query", "get", "changed_since")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class EntityQueries:
    """The statements of one entity: every record (``query``), one by ``:id`` (``get``)."""

    entity: str
    query: str
    get: str
    #: Several records by ``:ids`` (an expanding list): the wrapped query, when ``get`` is too;
    #: None when the file writes its own ``get`` (then each id goes through it).
    get_many: str | None = None
    #: The change column (``changed_since``) and the statements built on it: rows changed
    #: after ``:since``, every row with a change value, the largest change value.
    changed_since: str | None = None
    changed: str | None = None
    changed_all: str | None = None
    latest: str | None = None

    @property
    def of_customers(self) -> str:
        """The records that belong to the customers ``:ids`` (an expanding list)."""
        return f"SELECT * FROM ({self.query}) AS q WHERE q.customer_id IN :ids"


@dataclass(frozen=True)
class QueryMapping:
    """Every entity the mapping file maps, by entity name (``customer``, ``purchase`` …)."""

    path: Path
    entities: Mapping[str, EntityQueries]

    def of(self, entity: str) -> EntityQueries:
        """The statements of ``entity``; :class:`SourceError` naming the file when unmapped."""
        queries = self.entities.get(entity)
        if queries is None:
            mapped = ", ".join(sorted(self.entities)) or "nothing"
            raise SourceError(
                f"{self.path}: no query for {entity!r} (mapped: {mapped}); add '{entity}:' "
                "with a query that selects its fields"
            )
        return queries


def load_mapping(path: Path) -> QueryMapping:
    """Read and check the mapping file; :class:`SourceError` with ``file:line:col`` if wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(
            f"cannot read the SQL mapping file {path} ({exc.strerror}); set CRM_SOURCE_QUERIES"
        ) from None
    if len(raw) > MAX_QUERIES_FILE_BYTES:
        raise SourceError(f"{path}: larger than {MAX_QUERIES_FILE_BYTES} bytes")
    try:
        data, positions = parse_yaml(raw.decode("utf-8"), path)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except RuleError as exc:
        raise SourceError(str(exc)) from None

    def fail(loc: tuple[str, ...], message: str) -> SourceError:
        line, col = positions.nearest(loc, prefer_key=True)
        return SourceError(str(Problem(path, line, col, message)))

    if not isinstance(data, dict) or not data:
        raise fail((), "map each entity to its queries, e.g. 'customer:' then 'query: SELECT …'")
    entities: dict[str, EntityQueries] = {}
    for entity, spec in data.items():
        if not _ENTITY.match(entity):
            raise fail((entity,), f"entity {entity!r}: use a lower-case name like 'customer'")
        if not isinstance(spec, dict) or not isinstance(spec.get("query"), str):
            raise fail((entity,), f"{entity}: write 'query: SELECT …' under it")
        for key in spec:
            if key not in _KEYS:
                raise fail((entity, key), f"unknown key {key!r}; allowed: {', '.join(_KEYS)}")
        get_sql = spec.get("get", None)
        try:
            query = _statement(spec["query"], set())
        except ValueError as exc:
            raise fail((entity, "query"), f"{entity}.query {exc}") from None
        get_many = None
        if get_sql is None:
            get = f"SELECT * FROM ({query}) AS q WHERE q.id = :id"
            get_many = f"SELECT * FROM ({query}) AS q WHERE q.id IN :ids"
        else:
            try:
                get = _statement(get_sql, {"id"})
            except ValueError as exc:
                raise fail((entity, "get"), f"{entity}.get {exc}") from None
        column = spec.get("changed_since", None)
        changes: dict[str, str] = {}
        if column is not None:
            if not isinstance(column, str) or not _COLUMN.match(column):
                raise fail(
                    (entity, "changed_since"),
                    f"{entity}.changed_since: name one column of the query's result that the CRM "
                    "sets on every write, e.g. 'changed_since: updated_at'",
                )
            changes = {
                "changed_since": column,
                "changed": f"SELECT * FROM ({query}) AS q WHERE q.{column} > :since",
                "changed_all": f"SELECT * FROM ({query}) AS q WHERE q.{column} IS NOT NULL",
                "latest": f"SELECT MAX(q.{column}) AS latest FROM ({query}) AS q",
            }
        entities[entity] = EntityQueries(entity, query, get, get_many, **changes)
    return QueryMapping(path, entities)


def _statement(sql: object, params: set[str]) -> str:
    """``sql`` without a trailing ``;`` if it is one SELECT/WITH using exactly ``params``;
    otherwise :class:`ValueError` saying what to write."""
    if not isinstance(sql, str):
        raise ValueError("must be the text of one SELECT")
    body = sql.strip().removesuffix(";").strip()
    bare = _COMMENTS.sub(" ", body).strip()
    first = bare.split(None, 1)[0].upper() if bare else ""
    if first not in ("SELECT", "WITH"):
        raise ValueError(f"must be one read-only SELECT (or WITH … SELECT), not {first or 'empty'}")
    if ";" in bare:
        raise ValueError("must be one statement: remove the ';' inside it")
    found = set(text(body).compile().params)
    if found != params:
        wanted = ", ".join(f":{p}" for p in sorted(params)) or "no parameters"
        written = ", ".join(f":{p}" for p in sorted(found)) or "none"
        raise ValueError(
            f"must use {wanted} (found {written}); a colon before a name marks a parameter: "
            "write a literal one as '\\:'"
        )
    return body
