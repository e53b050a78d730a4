"""CRM data sources: the :class:`Source` protocol and its implementations."""

from __future__ import annotations

from pathlib import Path

from worker.errors import SourceError
from worker.sources.base import Record, RowSkip, Source
from worker.sources.csv import CsvSource
from worker.sources.memory import InMemorySource

__all__ = ["CsvSource", "InMemorySource", "Record", "RowSkip", "Source", "open_source"]


def open_source(spec: str) -> Source:
    """The source named by ``CRM_SOURCE``: ``csv:PATH`` or a plain folder path."""
    path = spec.removeprefix("csv:")
    if "://" in path:
        raise SourceError(
            f"CRM_SOURCE {spec.split('://')[0]}://… is not supported yet; use a CSV folder"
        )
    return CsvSource(Path(path))
