"""A shared pause of all sending: the circuit breaker for "the relay refuses *us*".

When the relay rejects our credentials or our policy (535, 5.7.x; see :mod:`worker.replies`)
every further message would fail the same way. Instead of burning each message's retries, the
worker that sees it pauses sending for every worker process (a timestamp in Redis,
``SEND_PAUSE_KEY``), logs an alert, and puts the message back for after the pause. Deliveries
that find the pause wait it out without counting an attempt.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from worker.constants import SEND_PAUSE, SEND_PAUSE_KEY

log = logging.getLogger(__name__)


class SendPause:
    """Reads and sets the shared pause."""

    def __init__(self, client: redis.Redis, *, length: timedelta = SEND_PAUSE) -> None:
        self.client = client
        self.length = length

    def remaining(self, now: datetime) -> timedelta | None:
        """How long sending stays paused, or ``None`` when it is not paused."""
        raw: Any = self.client.get(SEND_PAUSE_KEY)
        if raw is None:
            return None
        until = datetime.fromtimestamp(float(raw), UTC)
        return until - now if until > now else None

    def pause(self, now: datetime, reason: str) -> timedelta:
        """Pause all sending for ``length`` from ``now`` (extending a shorter pause) and alert."""
        until = now + self.length
        ttl_ms = int(self.length.total_seconds() * 1000) + 1000
        current: Any = self.client.get(SEND_PAUSE_KEY)
        if current is None or float(current) < until.timestamp():
            self.client.set(SEND_PAUSE_KEY, f"{until.timestamp():.3f}", px=ttl_ms)
        log.critical(
            "ALERT sending paused until %s: the mail relay refused us (%s); check the SMTP "
            "credentials, the sender domain's SPF/DKIM/DMARC and the relay's policy",
            until.isoformat(timespec="seconds"),
            reason,
        )
        return self.length

    def clear(self) -> None:
        """Resume sending now (an operator fixed the cause)."""
        self.client.delete(SEND_PAUSE_KEY)
