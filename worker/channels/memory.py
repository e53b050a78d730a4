"""A channel that keeps messages in a list: the stub for tests and previews."""

from __future__ import annotations

import threading

from worker.channels.base import Outgoing, Receipt


class MemoryChannel:
    """Collects every message it is given in ``sent``."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self._lock = threading.Lock()

    def send(self, message: Outgoing) -> Receipt:
        with self._lock:
            self.sent.append(message)
        return Receipt("kept in memory")

    def close(self) -> None:
        return None
