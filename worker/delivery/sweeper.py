"""The sweeper: takes over deliveries whose deadline passed and queues them again.

The ledger is the truth and the Dramatiq queue only a hint (DESIGN.md, "The delivery
promise"). Every delivery in a non-final state has a deadline in the ledger's deadline index:
claimed (the scheduler queues it in milliseconds), queued (a worker takes it within the queue
deadline, plus a little per message ahead of it), sending (the send lease), retrying (its
backoff, then the queue deadline). Whatever lost a message on the way — Redis restarted or
crashed, a worker was killed holding a batch, a scheduler died between claim and enqueue, a
batch was dead-lettered — its deliveries pass their deadline, and the next sweep queues them
again. The worker re-checks each one at send time as usual, and the ledger's lease keeps a
delivery that is queued twice from being sent twice.

After each sweep, the suppression events waiting for the CRM are posted
(:mod:`worker.delivery.crm_events`), so whatever runs a sweeper also tells the CRM.

A sweeper runs in every worker process (:class:`SweepMiddleware`, beside Dramatiq's threads)
and in every scheduler (:func:`run_sweeper`); two sweepers never take the same delivery, since
each takeover is one atomic step in the ledger.

Example::

    >>> sweeper = Sweeper(ledger, actor)                                   # doctest: +SKIP
    >>> sweeper.sweep()
    SweepReport(taken=Counter({'queued': 50}))
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dramatiq
import redis

from worker.constants import (
    DELIVERY_BATCH_SIZE,
    SWEEP_BATCH,
    WORKER_HEARTBEAT_KEPT,
    WORKERS_KEY,
)
from worker.delivery.actors import DeliveryActor
from worker.delivery.crm_events import CrmEvents
from worker.records.ledger import Ledger, Stale

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep took over, counted by the state each delivery was stuck in."""

    taken: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.taken.values())

    def describe(self) -> str:
        """``3 queued, 1 sending`` (a sending one may have reached the server)."""
        return ", ".join(f"{count} {state}" for state, count in sorted(self.taken.items()))


@dataclass
class Sweeper:
    """Takes over stale deliveries from ``ledger`` and queues them through ``actor``."""

    ledger: Ledger
    actor: DeliveryActor
    limit: int = SWEEP_BATCH
    #: Set in a worker process: its name in the workers' heartbeats (``crm-worker status``).
    heartbeat: str | None = None
    #: With CRM_CRM_EVENTS_URL: the suppression events posted to the CRM after each sweep.
    crm_events: CrmEvents | None = None

    def sweep(self) -> SweepReport:
        """Take over and queue every delivery past its deadline now; logs one line if any.

        Raises ``redis.RedisError`` when Redis is unreachable (the caller tries again later;
        nothing was taken that is not queued, or it comes back at its new deadline)."""
        report = SweepReport()
        if self.heartbeat is not None:
            self.beat()
        while True:
            stale = self.ledger.take_over(limit=self.limit, backlog=self.actor.depth())
            for batch, offset_s in batches(stale):
                as_of = self.ledger.clock() + timedelta(seconds=offset_s)
                self.actor.send(batch, as_of=as_of)
            report.taken.update(item.state for item in stale)
            if len(stale) < self.limit:
                break
        if report.total:
            log.info(
                "took over %d deliveries past their deadline (%s) and queued them again",
                report.total,
                report.describe(),
            )
        if self.crm_events is not None:
            self.crm_events.post(self.ledger.clock())
        return report

    def beat(self) -> None:
        """Record that this worker process is alive (and forget long-gone ones)."""
        if self.heartbeat is None:
            return
        now = self.ledger.clock().timestamp()
        with self.ledger.client.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS_KEY, {self.heartbeat: now})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - WORKER_HEARTBEAT_KEPT.total_seconds())
            pipe.execute()

    def leave(self) -> None:
        """This worker process stops: gone from the heartbeats at once (best effort)."""
        if self.heartbeat is not None:
            with contextlib.suppress(redis.RedisError):
                self.ledger.client.zrem(WORKERS_KEY, self.heartbeat)


def worker_name() -> str:
    """How a worker process appears in the heartbeats: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def batches(stale: list[Stale]) -> list[tuple[list[str], float]]:
    """Taken-over keys in queue batches of at most ``DELIVERY_BATCH_SIZE``, each batch one
    planning offset (a batch carries one planned instant)."""
    by_offset: defaultdict[float, list[str]] = defaultdict(list)
    for item in stale:
        by_offset[item.offset_s].append(item.key)
    return [
        (keys[start : start + DELIVERY_BATCH_SIZE], offset)
        for offset, keys in by_offset.items()
        for start in range(0, len(keys), DELIVERY_BATCH_SIZE)
    ]


def run_sweeper(sweeper: Sweeper, *, interval_s: float, stop: threading.Event) -> None:
    """Sweep every ``interval_s`` until ``stop`` is set. Redis errors are logged once when
    Redis is lost and once when it is back, not once per interval."""
    lost = False
    while not stop.wait(interval_s):
        try:
            sweeper.sweep()
        except redis.RedisError as exc:
            if not lost:
                log.warning("Redis lost (%s); the sweeper keeps trying", _short(exc))
            lost = True
            continue
        except Exception:
            log.exception("sweep failed; trying again in %.0f s", interval_s)
            continue
        if lost:
            log.info("Redis back; the sweeper runs again")
        lost = False


class SweepMiddleware(dramatiq.Middleware):
    """Runs a sweeper thread for as long as a Dramatiq worker runs in this process."""

    def __init__(self, sweeper: Callable[[], Sweeper], *, interval_s: float) -> None:
        self._sweeper = sweeper
        self._interval_s = interval_s
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._swept: Sweeper | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        stop = threading.Event()
        sweeper = self._sweeper()
        # Alive from the start (``crm-worker health worker``), not only after the first sweep.
        with contextlib.suppress(redis.RedisError):
            sweeper.beat()
        self._swept = sweeper
        self._stop = stop
        self._thread = threading.Thread(
            target=run_sweeper,
            args=(sweeper,),
            kwargs={"interval_s": self._interval_s, "stop": stop},
            name="crm-sweeper",
            daemon=True,
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._swept is not None:
            self._swept.leave()
        self._stop = self._thread = self._swept = None


def _short(exc: Exception) -> str:
    """The first line of an error, cut: a log line stays readable."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
