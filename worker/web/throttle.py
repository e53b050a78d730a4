"""At most one log line per kind of trouble per interval: a flood must not become a log flood.

A public endpoint sees the same trouble from many clients at once (20,000 connections that
never finish their headers, clients that hang up mid-body). One line per connection turns an
attack on the intake into an attack on the disk. :class:`LogThrottle` is the pure rule;
:class:`ThrottleFilter` applies it to warnings and errors of the intake's loggers, keyed by the
message template (``record.msg``), so each kind is seen at once and then summarised.

Example::

    >>> throttle = LogThrottle(interval_s=60.0)
    >>> throttle.admit("client gone", now=0.0)
    0
    >>> throttle.admit("client gone", now=1.0) is None  # the same kind within the minute
    True
    >>> throttle.admit("client gone", now=61.0)  # the next line says how many were held back
    1
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.constants import MAX_THROTTLED_LOG_KINDS


@dataclass
class LogThrottle:
    """Which lines of each kind may be written; not thread-safe (one per event loop)."""

    interval_s: float
    #: kind -> (when its last line was admitted, lines held back since)
    _kinds: dict[str, tuple[float, int]] = field(default_factory=dict)

    def admit(self, kind: str, *, now: float) -> int | None:
        """``None`` to hold this line back, else how many of its kind were held back before."""
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.interval_s:
            self._kinds[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._kinds) >= MAX_THROTTLED_LOG_KINDS:
            # Kinds are message templates, a fixed set in code; this only bounds memory should
            # a caller ever log a formatted message as its own template.
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return 0 if last is None else last[1]


class ThrottleFilter(logging.Filter):
    """Lets through the first warning or error of each kind per interval (lower levels pass),
    adding to it how many of that kind were held back."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = LogThrottle(interval_s)
        self._clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        held = self._throttle.admit(str(record.msg), now=self._clock())
        if held is None:
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last "
            record.msg += f"{self._throttle.interval_s:.0f} s)"
        return True
