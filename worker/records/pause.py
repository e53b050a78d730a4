"""A shared pause of all sending: the circuit breaker for "the relay refuses *us*".

When the relay rejects our credentials or our policy (535, 5.7.x; see
:mod:`worker.channels.replies`)
every further message would fail the same way. Instead of burning each message's retries, the
worker that sees it pauses sending for every worker process (a timestamp in Redis,
``SEND_PAUSE_KEY``), logs an alert, and puts the message back for after the pause. Deliveries
that find the pause wait it out without counting an attempt. When the relay cannot be reached
at all, a short pause of one backoff step does the same without an alert: every worker holds
off together instead of each hammering a relay that is down.
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
        #: This process logged that sending is held off or paused and has not yet logged that
        #: it goes out again: an outage is two lines in the log, not one per backoff step.
        self.held = False

    def remaining(self, now: datetime) -> timedelta | None:
        """How long sending stays paused, or ``None`` when it is not paused."""
        raw: Any = self.client.get(SEND_PAUSE_KEY)
        if raw is None:
            return None
        until = datetime.fromtimestamp(float(raw), UTC)
        return until - now if until > now else None

    def pause(
        self, now: datetime, reason: str, *, length: timedelta | None = None, alert: bool = True
    ) -> timedelta:
        """Pause all sending for ``length`` (default: the configured one) from ``now``,
        extending a shorter pause. ``alert``: the relay refused us, an operator must act; else
        the relay is unreachable and the pause only spares it (and us) a retry storm."""
        length = length or self.length
        until = now + length
        ttl_ms = int(length.total_seconds() * 1000) + 1000
        current: Any = self.client.get(SEND_PAUSE_KEY)
        if current is not None and float(current) >= until.timestamp():
            return length  # already paused as long: one log line per pause, not per message
        self.client.set(SEND_PAUSE_KEY, f"{until.timestamp():.3f}", px=ttl_ms)
        if not alert:
            if not self.held:
                log.warning("sending held off (retried every backoff step): %s", reason)
            else:
                log.debug("sending held off for %s more: %s", length, reason)
            self.held = True
            return length
        self.held = True
        log.critical(
            "ALERT sending paused until %s: the mail relay refused us (%s); check the SMTP "
            "credentials, the sender domain's SPF/DKIM/DMARC and the relay's policy",
            until.isoformat(timespec="seconds"),
            reason,
        )
        return length

    def sent_again(self) -> None:
        """A message went out: if this process had logged a hold or pause, say it is over."""
        if self.held:
            self.held = False
            log.info("sending resumed: the mail relay accepts messages again")

    def clear(self) -> bool:
        """Resume sending now (an operator fixed the cause); False when it was not paused."""
        return bool(self.client.delete(SEND_PAUSE_KEY))
