"""Prometheus metrics: delivery outcomes per rule and channel, SMTP latency, queue messages.

Dramatiq ships a Prometheus middleware, but it is built for the ``dramatiq`` command: it reads
its port from the environment at import time, needs a multiprocess directory and only starts
its HTTP server from a forked process. Our workers run Dramatiq inside ``crm-worker``, so the
same queue figures come from :class:`QueueMetrics`, a small middleware of our own, on one
registry served by :func:`serve` when ``CRM_METRICS_PORT`` is set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "crm_deliveries_total",
    "Delivery outcomes (sent, skipped, failed, unknown, retrying).",
    ["rule", "channel", "outcome"],
)
SMTP_SEND_SECONDS = Histogram(
    "crm_smtp_send_seconds",
    "Time from MAIL FROM to the server's reply after DATA, per message.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
QUEUE_MESSAGES = Counter(
    "crm_queue_messages_total",
    "Dramatiq messages handled by this process (done, failed = dead-lettered, skipped).",
    ["queue", "outcome"],
)
QUEUE_IN_PROGRESS = Gauge(
    "crm_queue_messages_in_progress", "Dramatiq messages being processed now.", ["queue"]
)
QUEUE_SECONDS = Histogram(
    "crm_queue_message_seconds",
    "Time to process one Dramatiq message (a batch of deliveries).",
    ["queue"],
    buckets=(0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)


def count_outcome(rule: str, channel: str, outcome: str) -> None:
    DELIVERIES.labels(rule=rule, channel=channel, outcome=outcome).inc()


class QueueMetrics(dramatiq.Middleware):
    """Counts and times the Dramatiq messages this process handles."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: Any, message: Any) -> None:
        QUEUE_IN_PROGRESS.labels(queue=message.queue_name).inc()
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        queue = message.queue_name
        QUEUE_IN_PROGRESS.labels(queue=queue).dec()
        started = self._started.pop(message.message_id, None)
        if started is not None:
            QUEUE_SECONDS.labels(queue=queue).observe(time.perf_counter() - started)
        QUEUE_MESSAGES.labels(queue=queue, outcome="failed" if exception else "done").inc()

    def after_skip_message(self, broker: Any, message: Any) -> None:
        QUEUE_IN_PROGRESS.labels(queue=message.queue_name).dec()
        self._started.pop(message.message_id, None)
        QUEUE_MESSAGES.labels(queue=message.queue_name, outcome="skipped").inc()


def serve(port: int) -> None:
    """Expose every metric at ``http://<host>:<port>/metrics`` (a daemon thread)."""
    start_http_server(port)
    log.info("Prometheus metrics on port %d", port)
