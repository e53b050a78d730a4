"""The Dramatiq side: one actor that delivers a batch of delivery keys.

A message carries delivery keys and two timestamps, never personal data or rendered content:
the worker reloads everything from the CRM at send time. Batches (``DELIVERY_BATCH_SIZE`` keys)
keep queue overhead per email small. Retries are ours, per key, through the ledger: Dramatiq's
own retries are off, so a poison message is dead-lettered after its first failure. The one
exception is a lost Redis connection (Redis restarting, a failover): that batch is retried
with backoff until Redis answers, never dead-lettered (FACTS.md: with ``max_retries`` 0 a
Redis restart dead-lettered about one batch in six). Should the retry itself be lost with the
connection, the ledger's deadline brings the keys back (:mod:`worker.delivery.sweeper`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from worker.constants import (
    BROKER_RETRY_MAX_BACKOFF_MS,
    BROKER_RETRY_MIN_BACKOFF_MS,
    DRAMATIQ_NAMESPACE,
)
from worker.delivery.batch import deliver_batch
from worker.delivery.outcome import DeliveryResult
from worker.delivery.send import Deliverer
from worker.localtime import utc_now

log = logging.getLogger(__name__)

ACTOR_NAME = "deliver_batch"


class DeliveryActor:
    """Declares the actor on a broker and sends batches to it."""

    def __init__(
        self,
        broker: RedisBroker,
        queue_name: str,
        deliverer: Callable[[], Deliverer],
        on_result: Callable[[DeliveryResult], None] | None = None,
    ) -> None:
        self._deliverer = deliverer
        self._on_result = on_result
        self.actor: dramatiq.Actor[..., None] = dramatiq.Actor(
            self._run,
            broker=broker,
            actor_name=ACTOR_NAME,
            queue_name=queue_name,
            priority=0,
            options={
                "max_retries": 0,
                "retry_when": _redis_unreachable,
                "min_backoff": BROKER_RETRY_MIN_BACKOFF_MS,
                "max_backoff": BROKER_RETRY_MAX_BACKOFF_MS,
                "time_limit": 15 * 60 * 1000,
            },
        )
        self.queue_key = f"{DRAMATIQ_NAMESPACE}:{queue_name}"
        self._client = broker.client

    def depth(self) -> int:
        """Dramatiq messages waiting in the queue now (not counting delayed ones)."""
        return int(self._client.llen(self.queue_key))

    def send(self, keys: Sequence[str], *, as_of: datetime, delay: timedelta | None = None) -> None:
        """Queue one batch of delivery keys planned for instant ``as_of``."""
        payload = {
            "keys": list(keys),
            "as_of": as_of.timestamp(),
            "enqueued_at": utc_now().timestamp(),
        }
        delay_ms = int(delay.total_seconds() * 1000) if delay else None
        self.actor.send_with_options(kwargs=payload, delay=delay_ms)

    def _run(self, keys: list[str], as_of: float, enqueued_at: float, **_: Any) -> None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("malformed delivery batch: 'keys' must be a list of strings")
        deliverer = self._deliverer()
        planned_for = datetime.fromtimestamp(float(as_of), UTC)
        queued = datetime.fromtimestamp(float(enqueued_at), UTC)
        later: dict[timedelta, list[str]] = {}
        try:
            results = deliver_batch(deliverer, keys, as_of=planned_for, enqueued_at=queued)
        except REDIS_UNAVAILABLE as exc:
            # Dramatiq logs an unhandled error with the message's repr (all 50 keys) and a
            # traceback, per batch; a Retry it logs at most as one short line. The sweeper
            # logs the outage itself once.
            log.debug("batch of %d deliveries lost Redis (%s); retrying", len(keys), exc)
            raise dramatiq.Retry(f"Redis unreachable: {exc}"[:200]) from None
        for result in results:
            key = result.key
            if self._on_result:
                self._on_result(result)
            if result.retry_after is not None:
                # Whole seconds: keys of one batch waiting out the same pause or backoff step
                # travel together instead of one queue message each.
                delay = timedelta(seconds=max(1, math.ceil(result.retry_after.total_seconds())))
                later.setdefault(delay, []).append(key)
        for delay, retry_keys in later.items():
            self.send(retry_keys, as_of=planned_for + (utc_now() - queued), delay=delay)


#: Redis errors that pass: a lost connection, and what a failing-over or full Redis answers
#: for a while (a replica not yet primary: READONLY; a cluster moving: TRYAGAIN; OOM). They
#: derive from ResponseError, which otherwise means a bug, so they are named one by one.
REDIS_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.OutOfMemoryError,
)


def _redis_unreachable(retries: int, exc: BaseException) -> bool:
    """Dramatiq's ``retry_when``: retry a batch that lost its Redis (connection lost, a
    failover under way, Redis full), whatever the count (the keys wait in the ledger; nothing
    else would take the message back); any other failure is a poison message or a bug,
    dead-lettered at once."""
    return isinstance(exc, (dramatiq.Retry, *REDIS_UNAVAILABLE))
