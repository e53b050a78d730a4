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
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from worker.records.status import SystemStatus

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


class StatusCollector:
    """The system's state as gauges, read from Redis at each scrape (what ``crm-worker
    status`` shows). They describe the whole system, not this process: every process that
    serves metrics exports the same values, so aggregate them with ``max``, never ``sum``."""

    def __init__(self, read: Callable[[], SystemStatus]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("crm_redis_up", "1 while Redis answers the status read.")
        try:
            status = self._read()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from status_gauges(status)

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read lazily: registering must not touch Redis


def status_gauges(status: SystemStatus) -> Iterator[GaugeMetricFamily]:
    """The gauges of one status read."""
    backlog = status.backlog
    count = GaugeMetricFamily(
        "crm_work_deliveries", "Deliveries not final yet, by state.", labels=["state"]
    )
    oldest = GaugeMetricFamily(
        "crm_work_oldest_age_seconds",
        "Age of the oldest delivery in each state (0 when none).",
        labels=["state"],
    )
    stuck = GaugeMetricFamily(
        "crm_work_stuck",
        "Deliveries past their deadline that the sweeper has not taken over.",
        labels=["state"],
    )
    for name, figures in backlog.states.items():
        count.add_metric([name], figures.count)
        oldest.add_metric([name], backlog.oldest_age_s(name) or 0.0)
        stuck.add_metric([name], figures.stuck)
    yield from (count, oldest, stuck)
    singles = {
        "crm_work_stuck_total": ("All stuck deliveries (exact).", backlog.stuck),
        "crm_workers_alive": ("Worker processes with a recent heartbeat.", status.workers_alive),
        "crm_queue_depth": ("Dramatiq batches waiting in the queue.", status.queued_messages),
        "crm_queue_dead_letters": ("Dramatiq batches dead-lettered.", status.dead_letters),
        "crm_sending_paused": ("1 while all sending is paused.", int(bool(status.paused_for_s))),
        "crm_suppression_events_waiting": (
            "Suppression events not yet taken by the CRM (CRM_CRM_EVENTS_URL).",
            status.crm_events_waiting,
        ),
        "crm_scheduler_last_pass_age_seconds": (
            "Seconds since the leader's last pass (-1: none recorded).",
            status.last_pass_age_s if status.last_pass_age_s is not None else -1,
        ),
    }
    for name, (text, value) in singles.items():
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge


def serve(port: int, status: Callable[[], SystemStatus] | None = None) -> None:
    """Expose every metric at ``http://<host>:<port>/metrics`` (a daemon thread); with
    ``status``, also the system's state (:class:`StatusCollector`)."""
    if status is not None:
        REGISTRY.register(StatusCollector(status))
    start_http_server(port)
    log.info("Prometheus metrics on port %d", port)
