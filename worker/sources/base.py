"""What every CRM data source provides: records of an entity, streamed, or one by id."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Record:
    """One CRM row, typed (dates are ``date``/aware ``datetime``, flags are ``bool``).

    ``problems`` names fields whose raw value was unusable (a garbage date, an unknown time
    zone) and why; such a field is ``None`` in ``fields`` so a rule that needs it skips the
    record with that reason instead of guessing.
    """

    entity: str
    id: str
    fields: Mapping[str, Any]
    problems: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields.get(name)


#: A pass's hint to a source: field name → a test on that field's typed value and whether the
#: value was unusable (``(None, True)``: it has a problem), as the record's field would be.
#: A source may drop a row (with a usable id) for which every test is False, before it becomes
#: a record; the pass screens the records it gets again, so a source that ignores the hint is
#: right too.
RowKeep = Mapping[str, Callable[[Any, bool], bool]]


@dataclass(frozen=True, slots=True)
class RowSkip:
    """A row that could not become a record at all (no usable id), with where and why."""

    entity: str
    where: str
    reason: str


class Source(Protocol):
    """The CRM as the worker sees it. Implementations: CSV folder, in-memory (tests, demo)."""

    def iter_records(self, entity: str, keep: RowKeep | None = None) -> Iterator[Record]:
        """Every usable record of ``entity``, streamed (never the whole table in memory);
        rows ``keep`` rules out may be left out."""
        ...

    def get(self, entity: str, record_id: str) -> Record | None:
        """One record by id, read fresh; ``None`` when it no longer exists."""
        ...

    def get_many(self, entity: str, record_ids: Collection[str]) -> dict[str, Record | None]:
        """Several records by id, read fresh, as ``get`` reads each (a pass fetches the
        customers of its due records this way: one query per chunk on a database)."""
        ...

    def columns(self, entity: str) -> frozenset[str]:
        """Field names records of ``entity`` have (for validating rules and templates)."""
        ...


@dataclass(frozen=True, slots=True)
class Changes:
    """Records of one entity changed after a watermark, and the watermark to ask with next.

    ``watermark`` is opaque to the caller (the largest change-column value seen, as text);
    ``None`` when nothing has a change value yet (an empty table).
    """

    records: list[Record]
    watermark: str | None


@runtime_checkable
class ChangeFeed(Protocol):
    """A source that can say what changed, so a pass re-reads the changes, not the CRM.

    A source without it (or an entity it does not follow) is read in full every pass.
    """

    def follows(self, entity: str) -> bool:
        """Can :meth:`changed` name the changed records of ``entity``?"""
        ...

    def watermark(self, entity: str) -> str | None:
        """The watermark as of now (taken before a full read, so nothing falls between)."""
        ...

    def changed(
        self, entity: str, since: str | None, *, overlap: timedelta = timedelta(0)
    ) -> Changes | None:
        """Records of ``entity`` changed after ``since`` less ``overlap`` (None: every record
        with a change value); ``None`` when the source cannot tell which (then everything may have
        changed: a CSV file written again)."""
        ...

    def records_of(self, entity: str, customer_ids: Collection[str]) -> list[Record]:
        """The records of ``entity`` that belong to these customers (their time zone and
        opt-in decide those records' messages), read fresh."""
        ...
