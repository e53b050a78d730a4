"""Records whose fields are typed on first access: what makes a pass over a large CRM cheap.

A planning pass looks at one field of most rows (the birthday, the purchase date) and drops the
row when that date is far from the window; typing every column of every row (dates, flags, time
zone lookups) was most of the cost of a pass. :class:`RowLayout` turns a row's cells (text, or
a database driver's values) into a :class:`Record` at once and types a field only when someone
reads it, with exactly the rules of :func:`worker.sources.schema.to_record` (same values, same
``problems``).

Example::

    >>> layout = RowLayout("customer", ["id", "birthday"])
    >>> layout.record(["42", "1990-03-14"], str)["birthday"]
    datetime.date(1990, 3, 14)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from worker.sources.base import Record, RowKeep, RowSkip
from worker.sources.schema import FIELD_TYPES, parse_field, parse_native, usable_id


class RowLayout:
    """The columns of one file (or query) of an entity: shared by all its rows."""

    def __init__(
        self, entity: str, header: list[str], text: Callable[[Any], str] | None = None
    ) -> None:
        self.entity = entity
        #: How a cell becomes its text (a database value: as a CSV export would write it);
        #: None for cells that are text already. Applied only to the cells that are read, and
        #: not to the date and time values :func:`~worker.sources.schema.parse_native` types
        #: as they are.
        self.text = text
        # Like dict(zip(header, cells)): a repeated column name means its last cell.
        self.columns = {name: n for n, name in enumerate(header)}
        self.id_column = self.columns.get("id")
        self.types = FIELD_TYPES.get(entity, {})

    def tests(self, keep: RowKeep | None) -> list[tuple[int, Callable[[Any], bool]]] | None:
        """``keep`` as (cell index, test on the cell) for :meth:`record`; None (keep every
        row) without a hint or when it names a column this layout does not have."""
        if not keep or any(name not in self.columns for name in keep):
            return None
        return [(self.columns[name], self._cell_test(name, test)) for name, test in keep.items()]

    def typed(self, name: str, cell: Any) -> tuple[Any, str | None]:
        """One cell of field ``name`` as ``(value, problem)``, as ``to_record`` types it."""
        parser = self.types.get(name)
        if self.text is None:
            return parse_field(name, cell.strip(), parser)
        return parse_native(name, cell, parser, self.text)

    def _cell_test(self, name: str, test: Callable[[Any, bool], bool]) -> Callable[[Any], bool]:
        # typed() unrolled per column: this runs on every row of a pass.
        parser, text = self.types.get(name), self.text
        if text is None:

            def on_text(cell: str) -> bool:
                value, problem = parse_field(name, cell.strip(), parser)
                return test(value, problem is not None)

            return on_text

        def on_value(cell: Any) -> bool:
            value, problem = parse_native(name, cell, parser, text)
            return test(value, problem is not None)

        return on_value

    def record(
        self,
        cells: Sequence[Any],
        where: Callable[[], str],
        tests: list[tuple[int, Callable[[Any], bool]]] | None = None,
    ) -> Record | RowSkip | None:
        """A record over ``cells``; a row without a usable id is skipped, as by ``to_record``.
        ``where`` names the row for the skip reason (called only then: most rows are fine).
        None: every one of ``tests`` (from :meth:`tests`) is False for the row's cells."""
        index = self.id_column
        record_id = self.cell(cells, index) if index is not None else ""
        if not usable_id(record_id):
            reason = f"id {record_id!r} is missing or has unusable characters"
            return RowSkip(self.entity, where(), reason)
        if tests is not None:
            for column, test in tests:
                # The cell LazyFields types: empty for a ragged row's missing cell.
                if test(cells[column] if column < len(cells) else ""):
                    break
            else:
                return None
        fields = LazyFields(self, cells)
        return Record(self.entity, record_id, fields, LazyProblems(fields))

    def cell(self, cells: Sequence[Any], index: int) -> str:
        """The stripped text of one cell; a ragged row's missing cells are empty, as in
        ``to_record``."""
        if index >= len(cells):
            return ""
        cell: str = cells[index] if self.text is None else self.text(cells[index])
        return cell.strip()


class LazyFields(Mapping[str, Any]):
    """The fields of one row; each typed (and cached) on first access."""

    __slots__ = ("_cells", "_layout", "_problems", "_typed")

    def __init__(self, layout: RowLayout, cells: Sequence[Any]) -> None:
        self._layout = layout
        self._cells = cells
        self._typed: dict[str, Any] = {}
        self._problems: dict[str, str] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._typed and name not in self._layout.columns:
            raise KeyError(name)
        return self.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        # Record.__getitem__ reads through get: the typing is here, not behind Mapping.get.
        try:
            return self._typed[name]
        except KeyError:
            index = self._layout.columns.get(name)
        if index is None:
            return default
        cells = self._cells
        value, problem = self._layout.typed(name, cells[index] if index < len(cells) else "")
        if problem:
            self._problems[name] = problem
        self._typed[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.columns)

    def __len__(self) -> int:
        return len(self._layout.columns)

    def problems(self) -> dict[str, str]:
        """Why typed fields are ``None``: types every typed column first."""
        for name in self._layout.types:
            if name in self._layout.columns:
                self[name]
        return self._problems


class LazyProblems(Mapping[str, str]):
    """``Record.problems`` of a lazy record: computed when first read."""

    __slots__ = ("_fields",)

    def __init__(self, fields: LazyFields) -> None:
        self._fields = fields

    def __getitem__(self, name: str) -> str:
        return self._fields.problems()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields.problems())

    def __len__(self) -> int:
        return len(self._fields.problems())
