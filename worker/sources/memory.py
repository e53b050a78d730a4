"""CRM data held in memory: the stub source for tests and experiments."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from worker.sources.base import Changes, Record, RowKeep, RowSkip
from worker.sources.schema import to_record


class InMemorySource:
    """Rows given as text mappings (like CSV cells), typed the same way as every source.

    Tests change ``rows`` between the plan and the send to simulate CRM edits.
    ``changed_since`` names, per entity, the column of ISO 8601 instants that says when a row
    was last written: the same change tracking as a SQL mapping's ``changed_since``.
    """

    def __init__(
        self,
        rows: Mapping[str, list[dict[str, Any]]] | None = None,
        *,
        changed_since: Mapping[str, str] | None = None,
    ) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (rows or {}).items()}
        self.changed_since = dict(changed_since or {})

    def _records(self, entity: str) -> Iterator[Record]:
        for n, raw in enumerate(self.rows.get(entity, []), start=1):
            text = {k: None if v is None else str(v) for k, v in raw.items()}
            result = to_record(entity, text, f"{entity}[{n}]")
            if not isinstance(result, RowSkip):
                yield result

    def iter_records(self, entity: str, keep: RowKeep | None = None) -> Iterator[Record]:
        return self._records(entity)  # small test data: every row, the hint unused

    def get(self, entity: str, record_id: str) -> Record | None:
        return next((r for r in self._records(entity) if r.id == record_id), None)

    def get_many(self, entity: str, record_ids: Collection[str]) -> dict[str, Record | None]:
        return {record_id: self.get(entity, record_id) for record_id in record_ids}

    def columns(self, entity: str) -> frozenset[str]:
        return frozenset(k for raw in self.rows.get(entity, []) for k in raw)

    def follows(self, entity: str) -> bool:
        return entity in self.changed_since

    def _stamps(self, entity: str) -> Iterator[tuple[datetime, dict[str, Any]]]:
        column = self.changed_since[entity]
        for raw in self.rows.get(entity, []):
            if raw.get(column) not in (None, ""):
                yield datetime.fromisoformat(str(raw[column])), raw

    def watermark(self, entity: str) -> str | None:
        latest = max((stamp for stamp, _ in self._stamps(entity)), default=None)
        return None if latest is None else latest.isoformat()

    def changed(
        self, entity: str, since: str | None, *, overlap: timedelta = timedelta(0)
    ) -> Changes:
        after = None if since is None else datetime.fromisoformat(since) - overlap
        ids = {
            str(raw.get("id"))
            for stamp, raw in self._stamps(entity)
            if after is None or stamp > after
        }
        records = [r for r in self._records(entity) if r.id in ids]
        latest = self.watermark(entity)
        return Changes(records, latest if latest is not None else since)

    def records_of(self, entity: str, customer_ids: Collection[str]) -> list[Record]:
        wanted = set(customer_ids)
        return [r for r in self._records(entity) if str(r["customer_id"] or "") in wanted]
