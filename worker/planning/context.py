"""What templates and ``when`` conditions see: plain data built from CRM records.

Only ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` go in: the sandbox lets a
template call public methods of objects it is given, so none are given. Dates become ISO 8601
text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from worker.planning.triggers import Occurrence
from worker.sources.base import Record


def plain(value: Any) -> Any:
    """``value`` as plain data (dates as ISO 8601 text)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


#: Values :func:`plain` returns as they are, told apart by exact type without a call.
_AS_IS = frozenset({str, int, float, bool, type(None)})


def record_data(record: Record) -> dict[str, Any]:
    """A record's fields as plain data, with ``id``."""
    data = {
        name: value if type(value) in _AS_IS else plain(value)
        for name, value in record.fields.items()
    }
    data["id"] = record.id
    return data


def message_context(
    records: Mapping[str, Record],
    *,
    occurrence: Occurrence | None = None,
    company: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The context of one message: one entry per entity (``customer``, ``purchase`` …),
    plus ``occurrence`` (key, tag, due_at) and ``company``."""
    context: dict[str, Any] = {entity: record_data(rec) for entity, rec in records.items()}
    if occurrence is not None:
        context["occurrence"] = {
            "key": occurrence.key,
            "tag": occurrence.tag,
            "due_at": occurrence.due_at.isoformat(),
        }
    context["company"] = dict(company or {})
    return context
