"""The CRM fields the worker understands, and how a raw text row becomes a typed record.

Known columns get types (dates, datetimes, flags, time zones); any other column passes through
as text, so templates can use it. A bad value never crashes a pass: the field becomes ``None``
and the reason is kept in ``Record.problems``. A row without a usable id is skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from worker.constants import MAX_REPORTED_UNKNOWN_ZONES
from worker.localtime import is_known_zone
from worker.sources.base import Record, RowSkip

log = logging.getLogger(__name__)

#: Entity name (as used in rules: ``customer.email``) → file/table name in the CRM.
ENTITY_TABLES: Mapping[str, str] = {
    "customer": "customers",
    "purchase": "purchases",
    "complaint": "complaints",
}

#: Ids become part of occurrence keys (``rule:entity:id:tag``): no separators inside.
_ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


def _parse_date(text: str) -> date:
    return date.fromisoformat(text)


def _parse_datetime(text: str) -> date | datetime:
    """A date field of a record that may be a calendar date or an instant (README, "Dates and
    time zones"): a bare date (``2026-02-28``) is a calendar date, that day in the customer's
    own zone, and stays a ``date``; a value with a time is an instant in UTC, and one without
    an offset is read as UTC (the CRM export convention, as for a SQL ``TIMESTAMP``)."""
    if len(text) == 10:
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text.replace(" ", "T", 1))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_TRUE = frozenset({"true", "yes", "y", "1", "t"})
_FALSE = frozenset({"false", "no", "n", "0", "f"})


def _parse_flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true/false")


def _parse_number(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


#: Unknown zone names already reported: one warning per name per process, not one per row.
_REPORTED_ZONES: set[str] = set()


def _parse_zone(text: str) -> str:
    if not is_known_zone(text):
        if text not in _REPORTED_ZONES and len(_REPORTED_ZONES) < MAX_REPORTED_UNKNOWN_ZONES:
            _REPORTED_ZONES.add(text)
            log.warning(
                "unknown time zone %r in the CRM data: its customers get CRM_TIMEZONE instead; "
                "fix the CRM value (an IANA name like 'Europe/Berlin')",
                text[:60],
            )
        raise ValueError("unknown time zone; CRM_TIMEZONE is used")
    return text


Parser = Callable[[str], Any]

#: Typed columns per entity; every other column is text.
FIELD_TYPES: Mapping[str, Mapping[str, Parser]] = {
    "customer": {
        "birthday": _parse_date,
        "email_opt_in": _parse_flag,
        "timezone": _parse_zone,
    },
    "purchase": {
        # A number, so that conditions like `purchase.total > 100` compare amounts, not text.
        "total": _parse_number,
        "purchased_at": _parse_datetime,
        "delivered_at": _parse_datetime,
    },
    "complaint": {
        "opened_at": _parse_datetime,
        "resolved_at": _parse_datetime,
    },
}

#: Columns each entity is expected to have (a source missing one is reported by ``check``).
REQUIRED_COLUMNS: Mapping[str, frozenset[str]] = {
    "customer": frozenset(
        {
            "id",
            "email",
            "first_name",
            "last_name",
            "birthday",
            "locale",
            "timezone",
            "account_manager_email",
            "email_opt_in",
        }
    ),
    "purchase": frozenset({"id", "customer_id", "product", "purchased_at", "delivered_at"}),
    "complaint": frozenset({"id", "customer_id", "subject", "opened_at", "resolved_at"}),
}


def usable_id(record_id: str) -> bool:
    """Whether ``record_id`` (stripped) can be part of an occurrence key."""
    if record_id.isascii() and record_id.isalnum() and len(record_id) <= 128:
        return True  # the common case (numeric ids), without the regular expression
    return bool(_ID_RE.match(record_id))


def parse_field(name: str, text: str, parser: Parser | None) -> tuple[Any, str | None]:
    """One stripped cell as ``(value, problem)``: text for untyped columns, ``None`` for an
    empty typed one, and ``(None, why)`` when the text is not usable."""
    if parser is None:
        return text, None
    if not text:
        return None, None
    try:
        return parser(text), None
    except ValueError as exc:
        return None, f"{name} {text[:40]!r} is not usable ({exc})"


def parse_native(
    name: str, value: object, parser: Parser | None, text: Callable[[Any], str]
) -> tuple[Any, str | None]:
    """A driver's value (a database cell) as ``parse_field(name, text(value).strip(), parser)``
    types it, where ``text`` writes the value as a CSV export would (a ``date``/``datetime`` as
    ISO 8601). The date and time values a pass screens on every row skip the text: a datetime
    is the same instant in UTC, one without offset read as UTC (as :func:`_parse_datetime`
    reads the text), a date stays the calendar date it is; exactly the values the text gives.
    Anything else goes through the text."""
    # type() is, not isinstance: a datetime is a date, and a subclass may write other text.
    if parser is _parse_datetime:
        if type(value) is datetime:
            if value.utcoffset() is None:  # isoformat() writes no offset: read as UTC
                return value.replace(tzinfo=UTC, fold=0), None
            return value.astimezone(UTC), None
        if type(value) is date:  # a SQL DATE: a calendar date, as its text would be
            return value, None
    elif parser is _parse_date and type(value) is date:
        return value, None  # date.fromisoformat(value.isoformat()) == value
    if value is None:
        return (None if parser is not None else ""), None  # the text of NULL is empty
    return parse_field(name, text(value).strip(), parser)


def to_record(entity: str, raw: Mapping[str, str | None], where: str) -> Record | RowSkip:
    """Type one raw row; ``where`` (e.g. ``customers.csv:17``) goes into skip reasons."""
    record_id = (raw.get("id") or "").strip()
    if not usable_id(record_id):
        return RowSkip(entity, where, f"id {record_id!r} is missing or has unusable characters")
    types = FIELD_TYPES.get(entity, {})
    fields: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in raw.items():
        if name is None:  # surplus cells of a ragged CSV row
            continue
        fields[name], problem = parse_field(name, (value or "").strip(), types.get(name))
        if problem:
            problems[name] = problem
    return Record(entity, record_id, fields, problems)
