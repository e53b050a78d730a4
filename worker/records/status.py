"""The state of the whole system in one read: what ``crm-worker status`` prints and the
Prometheus gauges export.

Redis (reachable, AOF on), the scheduler (leader, its last pass), the worker processes alive
(their heartbeats, written each sweep), the Dramatiq queue (waiting, delayed, dead-lettered),
the work in progress by state with what is stuck (:mod:`worker.records.backlog`), the send
pause, and the suppression events waiting for the CRM.

Example::

    >>> status = read_status(client, queue_name="crm-messages", sweep_interval_s=10)
    ...                                                               # doctest: +SKIP
    >>> status.workers_alive, status.backlog.stuck
    (2, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from worker.constants import (
    DRAMATIQ_NAMESPACE,
    SCHEDULER_LAST_PASS_KEY,
    SCHEDULER_LOCK_KEY,
    SEND_PAUSE_KEY,
    SUPPRESSION_EVENTS_KEY,
    SUPPRESSION_EVENTS_RETRY_KEY,
    SWEEP_INTERVALS_OF_GRACE,
    WORKERS_KEY,
)
from worker.localtime import utc_now
from worker.records.backlog import Backlog, read_backlog


@dataclass
class SystemStatus:
    """One look at the system at ``now`` (unix seconds)."""

    now: float
    aof: bool = False
    #: Whether a scheduler holds the leader lock now, and seconds until it expires.
    leader_lock_s: float | None = None
    #: The ``host:pid`` of the scheduler holding the lock (None: no lock, or one taken by a
    #: version that did not name itself).
    leader: str | None = None
    #: The last pass (``at``, ``by``: the scheduler or ``run --once`` that ran it, ``took_s``,
    #: ``queued`` …), if any.
    last_pass: dict[str, str] = field(default_factory=dict)
    #: Worker processes with a recent heartbeat: name and seconds since it.
    workers: list[tuple[str, float]] = field(default_factory=list)
    queued_messages: int = 0
    delayed_messages: int = 0
    dead_letters: int = 0
    backlog: Backlog = field(default_factory=lambda: Backlog(now=0.0))
    paused_for_s: float | None = None
    #: Suppression events not yet taken by the CRM, how often posting failed in a row, and
    #: seconds until the next try (None: at the next sweep).
    crm_events_waiting: int = 0
    crm_events_failures: int = 0
    crm_events_retry_in_s: float | None = None

    @property
    def workers_alive(self) -> int:
        return len(self.workers)

    @property
    def last_pass_age_s(self) -> float | None:
        at = self.last_pass.get("at")
        return None if at is None else max(self.now - float(at), 0.0)

    @property
    def healthy(self) -> bool:
        """Nothing stuck and someone to deliver when there is work."""
        return self.backlog.stuck == 0 and (self.workers_alive > 0 or self.backlog.total == 0)


def read_status(client: redis.Redis, *, queue_name: str, sweep_interval_s: float) -> SystemStatus:
    """Read the status; raises ``redis.RedisError`` when Redis is unreachable."""
    now = utc_now().timestamp()
    grace_s = sweep_interval_s * SWEEP_INTERVALS_OF_GRACE
    queue = f"{DRAMATIQ_NAMESPACE}:{queue_name}"
    with client.pipeline(transaction=False) as pipe:
        pipe.info("persistence")
        pipe.pttl(SCHEDULER_LOCK_KEY)
        pipe.get(SCHEDULER_LOCK_KEY)
        pipe.hgetall(SCHEDULER_LAST_PASS_KEY)
        pipe.zrangebyscore(WORKERS_KEY, now - grace_s, "+inf", withscores=True)
        pipe.llen(queue)
        pipe.llen(f"{queue}.DQ")
        pipe.zcard(f"{queue}.XQ")
        pipe.get(SEND_PAUSE_KEY)
        pipe.xlen(SUPPRESSION_EVENTS_KEY)
        pipe.hgetall(SUPPRESSION_EVENTS_RETRY_KEY)
        (
            persistence,
            lock_ms,
            lock_value,
            last_pass,
            workers,
            depth,
            delayed,
            dead,
            paused,
            events,
            retry,
        ) = pipe.execute()
    # The lock's value is "host:pid token" (LeaderLock.token).
    holder, named, _token = _text(lock_value or "").partition(" ")
    paused_until = float(paused) if paused is not None else None
    retry = {_text(k): _text(v) for k, v in retry.items()}
    next_try = float(retry["next_at"]) - now if "next_at" in retry else None
    return SystemStatus(
        now=now,
        aof=bool(int(persistence.get("aof_enabled", 0))),
        leader_lock_s=lock_ms / 1000 if lock_ms and lock_ms > 0 else None,
        leader=holder if named and lock_ms and lock_ms > 0 else None,
        last_pass={_text(k): _text(v) for k, v in last_pass.items()},
        workers=[(_text(name), max(now - score, 0.0)) for name, score in workers],
        queued_messages=int(depth),
        delayed_messages=int(delayed),
        dead_letters=int(dead),
        backlog=read_backlog(client, now=now, grace_s=grace_s),
        paused_for_s=paused_until - now if paused_until and paused_until > now else None,
        crm_events_waiting=int(events),
        crm_events_failures=int(retry.get("attempts", 0)),
        crm_events_retry_in_s=next_try if next_try is not None and next_try > 0 else None,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
