"""A folder of ``.eml`` files: where mail goes when no SMTP host is configured."""

from __future__ import annotations

import os
import re
from pathlib import Path

from worker.channels.base import Outgoing, Receipt

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]+")


class OutboxChannel:
    """Writes each message to ``<folder>/<delivery key>.eml`` (atomically, one file per key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        return self.folder / f"{_UNSAFE.sub('_', key)}.eml"

    def send(self, message: Outgoing) -> Receipt:
        path = self.path_for(message.key)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(message.data)
        partial.replace(path)
        return Receipt(f"written to {path}")

    def close(self) -> None:
        return None
