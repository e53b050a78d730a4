"""The Dramatiq side: one actor that delivers a batch of delivery keys.

A message carries delivery keys and two timestamps, never personal data or rendered content:
the worker reloads everything from the CRM at send time. Batches (``DELIVERY_BATCH_SIZE`` keys)
keep queue overhead per email small. Retries are ours, per key, through the ledger: Dramatiq's
own retries are off, so a poison message is dead-lettered after its first failure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from worker.batch import deliver_batch
from worker.delivery import Deliverer
from worker.localtime import utc_now
from worker.outcome import DeliveryResult

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
            options={"max_retries": 0, "time_limit": 15 * 60 * 1000},
        )

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
        for result in deliver_batch(deliverer, keys, as_of=planned_for, enqueued_at=queued):
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
