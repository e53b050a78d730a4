"""CRM data held in memory: the stub source for tests and experiments."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from worker.sources.base import Record, RowKeep, RowSkip
from worker.sources.schema import to_record


class InMemorySource:
    """Rows given as text mappings (like CSV cells), typed the same way as every source.

    Tests change ``rows`` between the plan and the send to simulate CRM edits.
    """

    def __init__(self, rows: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (rows or {}).items()}

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
