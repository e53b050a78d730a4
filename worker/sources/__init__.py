"""CRM data sources: the :class:`Source` protocol and its implementations.

The SQL source (and SQLAlchemy, ≈ 0.15 s to import) is loaded only when ``CRM_SOURCE`` names a
database or :class:`SqlSource` is asked for: a CSV deployment never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.errors import SourceError
from worker.sources.base import Record, RowSkip, Source
from worker.sources.csv import CsvSource
from worker.sources.memory import InMemorySource

if TYPE_CHECKING:
    from worker.sources.sql import SqlSource

__all__ = [
    "CsvSource",
    "InMemorySource",
    "Record",
    "RowSkip",
    "Source",
    "SqlSource",
    "open_source",
]


def open_source(spec: str, queries: Path | None = None) -> Source:
    """The source named by ``CRM_SOURCE``: ``csv:PATH``, a plain folder path, or a SQLAlchemy
    database URL whose mapping file ``queries`` (``CRM_SOURCE_QUERIES``) is required."""
    path = spec.removeprefix("csv:")
    if "://" not in path:
        return CsvSource(Path(path))
    from worker.sources.mapping import load_mapping
    from worker.sources.sql import SqlSource, is_database_url, masked

    if is_database_url(spec):
        if queries is None:
            raise SourceError(
                f"CRM_SOURCE {masked(spec)} is a database: set CRM_SOURCE_QUERIES to the file "
                "mapping its tables to our fields (see examples/sql/queries.yaml)"
            )
        return SqlSource(spec, load_mapping(queries))
    raise SourceError(
        f"CRM_SOURCE {masked(spec)} is neither a CSV folder nor a database URL "
        "(postgresql+psycopg://, mysql+pymysql://, sqlite:///)"
    )


def __getattr__(name: str) -> Any:
    if name == "SqlSource":
        from worker.sources.sql import SqlSource

        return SqlSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
