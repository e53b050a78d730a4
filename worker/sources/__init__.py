"""CRM data sources: the :class:`Source` protocol and its implementations."""

from __future__ import annotations

from pathlib import Path

from worker.errors import SourceError
from worker.sources.base import Record, RowSkip, Source
from worker.sources.csv import CsvSource
from worker.sources.mapping import load_mapping
from worker.sources.memory import InMemorySource
from worker.sources.sql import SqlSource, is_database_url, masked

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
    if is_database_url(spec):
        if queries is None:
            raise SourceError(
                f"CRM_SOURCE {masked(spec)} is a database: set CRM_SOURCE_QUERIES to the file "
                "mapping its tables to our fields (see examples/sql/queries.yaml)"
            )
        return SqlSource(spec, load_mapping(queries))
    path = spec.removeprefix("csv:")
    if "://" in path:
        raise SourceError(
            f"CRM_SOURCE {masked(spec)} is neither a CSV folder nor a database URL "
            "(postgresql+psycopg://, mysql+pymysql://, sqlite:///)"
        )
    return CsvSource(Path(path))
