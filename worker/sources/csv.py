"""CRM data as a folder of CSV files (``customers.csv``, ``purchases.csv``, ``complaints.csv``).

The embedded default and the demo data. Files are streamed row by row; :meth:`CsvSource.get`
reads one row fresh from disk through a byte-offset index (rebuilt when the file changes), so a
worker sees an edit made after the message was queued.
"""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from worker.errors import SourceError
from worker.sources.base import Changes, Record, RowKeep, RowSkip
from worker.sources.lazy import RowLayout
from worker.sources.schema import ENTITY_TABLES, to_record

log = logging.getLogger(__name__)


class _LineTracker:
    """Feeds decoded lines to ``csv.reader`` while remembering where the next line starts."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.next_offset = stream.tell()

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.stream.readline()
            if not line:
                return
            self.next_offset += len(line)
            yield line.decode("utf-8-sig" if self.next_offset == len(line) else "utf-8", "replace")


@dataclass
class _Index:
    mtime_ns: int
    size: int
    header: list[str]
    offsets: dict[str, int]


class CsvSource:
    """A folder of CSV exports, one file per entity."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise SourceError(f"CRM data folder {folder} does not exist; set CRM_SOURCE")
        self.folder = folder
        self._indexes: dict[str, _Index] = {}
        self._lock = threading.Lock()
        # The files of the known entities, joined once: three Path joins were a tenth of a get.
        self._paths = {entity: folder / f"{table}.csv" for entity, table in ENTITY_TABLES.items()}

    def path(self, entity: str) -> Path:
        known = self._paths.get(entity)
        return known if known is not None else self.folder / f"{entity}s.csv"

    def _open(self, entity: str) -> BinaryIO:
        try:
            return self.path(entity).open("rb")
        except FileNotFoundError:
            raise SourceError(f"{self.path(entity)} not found: no {entity} data") from None

    def _rows(self, entity: str, start: int = 0) -> Iterator[tuple[int, int, list[str], list[str]]]:
        """(line number, byte offset, header, cells) for every data row from byte ``start``
        (0, or the start of a row)."""
        with self._open(entity) as stream:
            tracker = _LineTracker(stream)
            reader = csv.reader(tracker)
            header = [h.strip() for h in next(reader, [])]
            if start:
                stream.seek(start)
                tracker.next_offset = start
            while True:
                offset = tracker.next_offset
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    log.warning(
                        "%s:%d: unreadable CSV row skipped: %s",
                        self.path(entity),
                        reader.line_num,
                        exc,
                    )
                    continue
                if cells:
                    yield reader.line_num, offset, header, cells

    def iter_records(self, entity: str, keep: RowKeep | None = None) -> Iterator[Record]:
        # The bulk path of every pass: C-speed parsing of a text stream (no byte offsets
        # needed here) and fields typed only when read (see worker.sources.lazy).
        path = self.path(entity)
        try:
            stream = path.open(encoding="utf-8-sig", errors="replace", newline="")
        except FileNotFoundError:
            raise SourceError(f"{path} not found: no {entity} data") from None
        with stream:
            reader = csv.reader(stream)
            header = [h.strip() for h in next(reader, [])]
            layout = RowLayout(entity, header)
            tests = layout.tests(keep)
            name = f"{path.name}:{{}}".format

            def where() -> str:  # one function, not one per row: called for a skipped row
                return name(reader.line_num)

            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    log.warning("%s:%d: unreadable CSV row skipped: %s", path, reader.line_num, exc)
                    continue
                if not cells:
                    continue
                result = layout.record(cells, where, tests)
                if result is None:
                    continue
                if isinstance(result, RowSkip):
                    log.warning("%s: row skipped: %s", result.where, result.reason)
                    continue
                yield result

    def get(self, entity: str, record_id: str) -> Record | None:
        index = self._index(entity)
        offset = index.offsets.get(record_id)
        if offset is None:
            return None
        with self._open(entity) as stream:
            stream.seek(offset)
            cells = next(csv.reader(_LineTracker(stream)), None)
        if not cells:
            return None
        result = to_record(entity, _row(index.header, cells), f"{self.path(entity).name}@{offset}")
        if isinstance(result, RowSkip) or result.id != record_id:
            # The file changed between index and read; rebuild once and try again.
            with self._lock:
                self._indexes.pop(entity, None)
            return self._get_rebuilt(entity, record_id)
        return result

    def get_many(self, entity: str, record_ids: Collection[str]) -> dict[str, Record | None]:
        # Each through the offset index: a seek and one row per id, no faster path needed.
        return {record_id: self.get(entity, record_id) for record_id in record_ids}

    def _get_rebuilt(self, entity: str, record_id: str) -> Record | None:
        for record in self.iter_records(entity):
            if record.id == record_id:
                return record
        return None

    def _index(self, entity: str) -> _Index:
        try:
            stat = self.path(entity).stat()
        except FileNotFoundError:
            raise SourceError(f"{self.path(entity)} not found: no {entity} data") from None
        with self._lock:
            index = self._indexes.get(entity)
            if index and (index.mtime_ns, index.size) == (stat.st_mtime_ns, stat.st_size):
                return index
            header, offsets = self._offsets(entity)
            index = _Index(stat.st_mtime_ns, stat.st_size, header, offsets)
            self._indexes[entity] = index
            return index

    def _offsets(self, entity: str) -> tuple[list[str], dict[str, int]]:
        """The header and the byte offset of each id's (first) row. Lines are split at C speed
        until the first double quote; from there on (a quoted field may span lines) the rest
        goes through ``csv.reader``, line by line."""
        offsets: dict[str, int] = {}
        with self._open(entity) as stream:
            first = stream.readline()
            header = next(csv.reader([first.decode("utf-8-sig", "replace")]), [])
            header = [h.strip() for h in header]
            if '"' in first.decode("utf-8-sig", "replace") or "id" not in header:
                return self._offsets_by_reader(entity, header, offsets, 0)
            column = header.index("id")
            offset = len(first)
            for line in stream:
                if b'"' in line:
                    return self._offsets_by_reader(entity, header, offsets, offset)
                cells = line.split(b",", column + 1)
                if column < len(cells) and line.strip():
                    offsets.setdefault(cells[column].decode("utf-8", "replace").strip(), offset)
                offset += len(line)
        return header, offsets

    def _offsets_by_reader(
        self, entity: str, header: list[str], offsets: dict[str, int], start: int
    ) -> tuple[list[str], dict[str, int]]:
        for _, offset, found_header, cells in self._rows(entity, start):
            header = found_header
            id_column = header.index("id") if "id" in header else len(cells)
            if id_column < len(cells):
                offsets.setdefault(cells[id_column].strip(), offset)
        return header, offsets

    # Change tracking: a CSV export is rewritten whole, so which rows changed is unknown; a
    # file whose modification time or size changed sends the scheduler back to a full pass
    # (:mod:`worker.planning.ahead`), an unchanged folder costs one stat per file and pass.

    def follows(self, entity: str) -> bool:
        return True

    def watermark(self, entity: str) -> str | None:
        try:
            stat = self.path(entity).stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def changed(
        self, entity: str, since: str | None, *, overlap: timedelta = timedelta(0)
    ) -> Changes | None:
        mark = self.watermark(entity)
        return Changes([], mark) if mark == since else None

    def records_of(self, entity: str, customer_ids: Collection[str]) -> list[Record]:
        wanted = set(customer_ids)
        return [r for r in self.iter_records(entity) if str(r["customer_id"] or "") in wanted]

    def columns(self, entity: str) -> frozenset[str]:
        with self._open(entity) as stream:
            header = next(csv.reader(_LineTracker(stream)), [])
        return frozenset(h.strip() for h in header)


def _row(header: list[str], cells: list[str]) -> dict[str, str | None]:
    row: dict[str, str | None] = dict.fromkeys(header)
    for name, value in zip(header, cells, strict=False):
        row[name] = value
    return row
