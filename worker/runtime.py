"""Assembling the worker from settings: the one place where parts are wired together.

The CLI builds a :class:`Runtime` and calls its methods; tests build one with their own
settings (real Redis, a test SMTP server) or swap a part (``channel``, ``source``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from worker.authoring.explanation import Explainer
from worker.authoring.validation import vet_rule
from worker.channels import Channel, all_channels
from worker.connections import close_redis, make_broker, open_redis
from worker.constants import (
    DELIVERY_BATCH_SIZE,
    GC_YOUNG_THRESHOLD,
    WAIT_POLL_WINDOW,
    WORKER_IDLE_POLL,
)
from worker.delivery.actors import DeliveryActor
from worker.delivery.crm_events import CrmEvents
from worker.delivery.send import Deliverer
from worker.delivery.sweeper import Sweeper, SweepMiddleware, run_sweeper, worker_name
from worker.embedded_redis import EmbeddedRedis
from worker.errors import ConfigError
from worker.localtime import utc_now
from worker.messages.rendering import TemplateRenderer
from worker.messages.signature import DkimSigner
from worker.messages.unsubscribe import Unsubscriber, shared_secret
from worker.metrics import QueueMetrics
from worker.metrics import serve as serve_metrics
from worker.planning.ahead import AheadPlanner
from worker.planning.contact_policy import ContactPolicy
from worker.planning.due_index import DueIndex
from worker.planning.events import Event, EventLog, record_event_once
from worker.planning.plan import StaffReader, event_rules
from worker.planning.scheduler import LeaderLock, PassReport, Scheduler, run_scheduler
from worker.records.delivery_log import DeliveryLog
from worker.records.ledger import RETRYABLE_STATES, Ledger
from worker.records.pause import SendPause
from worker.records.status import read_status
from worker.records.suppression import SuppressionList
from worker.records.suppression_events import SuppressionOutbox
from worker.rules.catalog import RuleCatalog
from worker.settings import Settings
from worker.sources import Source, open_source

log = logging.getLogger(__name__)

#: States in which a delivery is still on its way (not final, not waiting for a retry).
IN_FLIGHT = frozenset({"claimed", "queued", "sending"})


@dataclass
class RunSummary:
    """The outcome of ``run --once``: the pass plus what the workers did with its keys."""

    report: PassReport
    states: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class TakenEvent:
    """What became of one reported CRM event."""

    event: Event
    #: False: its id was recorded before (a call the CRM retries); nothing is recorded twice.
    new: bool
    #: How many rules react to its type (0: it is only kept, for rules added later).
    rules: int
    #: The delivery keys claimed and queued by this call.
    queued: list[str]


class Runtime:
    """Lazily built parts of a running worker; close it when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        channel: Channel | None = None,
        source: Source | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self._channel = channel
        self._source = source
        self._redis = redis_client
        self._embedded: EmbeddedRedis | None = None
        self._metrics_served = False

    @cached_property
    def redis(self) -> redis.Redis:
        if self._redis is not None:
            return self._redis
        client, self._embedded = open_redis(self.settings)
        return client

    @cached_property
    def broker(self) -> RedisBroker:
        s = self.settings
        broker = make_broker(
            self.redis,
            heartbeat_timeout_s=s.broker_heartbeat_timeout_s,
            maintenance_chance=s.broker_maintenance_chance,
        )
        broker.add_middleware(QueueMetrics())
        broker.add_middleware(
            SweepMiddleware(
                lambda: Sweeper(
                    self.ledger, self.actor, heartbeat=worker_name(), crm_events=self.crm_events
                ),
                interval_s=s.sweep_interval_s,
            )
        )
        dramatiq.set_broker(broker)
        return broker

    @cached_property
    def source(self) -> Source:
        return (
            self._source
            if self._source is not None
            else open_source(self.settings.source, self.settings.source_queries)
        )

    @cached_property
    def catalog(self) -> RuleCatalog:
        # A rule naming a field the CRM data lacks is refused like a broken edit.
        catalog = RuleCatalog(self.settings.rules_dir, vet=vet_rule(self.source))
        catalog.refresh()
        return catalog

    @cached_property
    def renderer(self) -> TemplateRenderer:
        return TemplateRenderer(self.settings.templates_dir, self.settings.default_locale)

    @cached_property
    def dkim(self) -> DkimSigner | None:
        return DkimSigner.from_settings(self.settings)

    @cached_property
    def channel(self) -> Channel:
        if self._channel is not None:
            return self._channel
        return all_channels(self.settings, sign=self.dkim.sign if self.dkim else None)

    @cached_property
    def ledger(self) -> Ledger:
        s = self.settings
        return Ledger(
            self.redis,
            send_lease=timedelta(seconds=s.send_lease_s),
            claim_deadline=timedelta(seconds=s.claim_deadline_s),
            queue_deadline=timedelta(seconds=s.queue_deadline_s),
        )

    @cached_property
    def suppression(self) -> SuppressionList:
        return SuppressionList(self.redis, announce=self.settings.crm_events_target is not None)

    @cached_property
    def crm_events(self) -> CrmEvents | None:
        """Posts suppression events to CRM_CRM_EVENTS_URL (None when unset)."""
        return CrmEvents.from_settings(self.settings, SuppressionOutbox(self.redis))

    @cached_property
    def pause(self) -> SendPause:
        return SendPause(self.redis)

    @cached_property
    def delivery_log(self) -> DeliveryLog:
        return DeliveryLog(self.redis)

    @cached_property
    def default_zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    @cached_property
    def deliverer(self) -> Deliverer:
        s = self.settings
        return Deliverer(
            catalog=self.catalog,
            source=self.source,
            renderer=self.renderer,
            channel=self.channel,
            ledger=self.ledger,
            default_zone=self.default_zone,
            mail_from=s.mail_from,
            envelope_sender=s.sender_address,
            sender_domain=s.sender_domain,
            company=s.company,
            reply_to=s.reply_to,
            unsubscriber=self.unsubscriber,
            dkim=self.dkim,
            suppression=self.suppression,
            pause=self.pause,
            delivery_log=self.delivery_log,
            retry_backoff=timedelta(seconds=s.retry_backoff_s),
            staff=self.staff,
            verp_address=s.verp_address,
        )

    @cached_property
    def staff(self) -> StaffReader:
        """Language and zone of internal mail whose send step names none."""
        s = self.settings
        return StaffReader(
            s.internal_locale or s.default_locale,
            ZoneInfo(s.internal_timezone) if s.internal_timezone else self.default_zone,
        )

    @cached_property
    def unsubscriber(self) -> Unsubscriber:
        """Signs (and verifies) unsubscribe links with ``CRM_UNSUBSCRIBE_SECRET``, else with a
        random secret shared through Redis."""
        s = self.settings
        secret = (
            s.unsubscribe_secret.get_secret_value().encode("utf-8")
            if s.unsubscribe_secret
            else shared_secret(self.redis)
        )
        retired = tuple(old.get_secret_value().encode("utf-8") for old in s.unsubscribe_old_secrets)
        return Unsubscriber(
            secret, s.effective_unsubscribe_url, s.effective_unsubscribe_mailbox, retired
        )

    @cached_property
    def actor(self) -> DeliveryActor:
        return DeliveryActor(self.broker, self.settings.queue_name, self._fresh_deliverer)

    @cached_property
    def sweeper(self) -> Sweeper:
        return Sweeper(self.ledger, self.actor, crm_events=self.crm_events)

    def _fresh_deliverer(self) -> Deliverer:
        # Rule edits take effect for messages not yet sent (cheap: only changed files are read).
        self.catalog.refresh()
        return self.deliverer

    @cached_property
    def scheduler(self) -> Scheduler:
        return Scheduler(
            catalog=self.catalog,
            source=self.source,
            ledger=self.ledger,
            actor=self.actor,
            default_zone=self.default_zone,
            company=self.settings.company,
            contact_policy=self.contact_policy,
            events=self.events,
            delivery_log=self.delivery_log,
            renderer=self.renderer,
            ahead=AheadPlanner(
                catalog=self.catalog,
                source=self.source,
                index=DueIndex(self.redis),
                default_zone=self.default_zone,
                company=self.settings.company,
                horizon=timedelta(hours=self.settings.plan_horizon_h),
                overlap=timedelta(seconds=self.settings.change_overlap_s),
                events=self.events,
            ),
        )

    @cached_property
    def explainer(self) -> Explainer:
        """``plan --customer --explain``: read-only verdicts per rule for one customer."""
        return Explainer(
            catalog=self.catalog,
            source=self.source,
            ledger=self.ledger,
            contact_policy=self.contact_policy,
            events=self.events,
            default_zone=self.default_zone,
            company=self.settings.company,
            suppression=self.suppression,
            renderer=self.renderer,
        )

    @cached_property
    def contact_policy(self) -> ContactPolicy:
        return ContactPolicy(self.redis, self.settings.effective_contact_cap)

    @cached_property
    def events(self) -> EventLog:
        return EventLog(self.redis)

    def take_event(
        self,
        event_type: str,
        record_id: str,
        *,
        data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        at: datetime | None = None,
        now: datetime | None = None,
    ) -> TakenEvent:
        """Record a CRM event, then claim and queue at once what its ``event`` rules send: the
        one entry point of every intake (``crm-worker event``, the HTTP intake).

        ``now`` is the instant the rules are evaluated at; default the event's own time, so
        ``crm-worker event --at`` replays a past event as then. The HTTP intake passes the real
        time: an event stamped in the future waits for the scheduler's pass at that time.
        A known event id is not recorded again, yet its messages are still claimed and queued:
        a first call that failed between the two steps loses nothing when the CRM retries it,
        and the ledger's claims keep the retry from sending anything twice.
        Raises :class:`~worker.errors.EventError` for an unusable event, ``redis.RedisError``
        when Redis is down, :class:`~worker.errors.SourceUnavailableError` when the CRM data
        is (the event is recorded by then; the scheduler's next pass queues its messages).
        """
        event, new = record_event_once(
            self.redis, event_type, record_id, data=data, event_id=event_id, at=at
        )
        self.catalog.refresh()
        rules = len(event_rules(self.catalog, event.type))
        queued = self.scheduler.react(event, now or event.at).queued if rules else []
        return TakenEvent(event, new, rules, queued)

    def start_worker(self, threads: int | None = None) -> dramatiq.Worker:
        """Start Dramatiq worker threads consuming our queue in this process."""
        self.actor  # noqa: B018 - declares the actor (and its queue) before the worker starts
        self._serve_metrics()
        worker = dramatiq.Worker(
            self.broker,
            queues={self.settings.queue_name},
            worker_threads=threads or self.settings.worker_threads,
            worker_timeout=int(WORKER_IDLE_POLL.total_seconds() * 1000),
        )
        worker.start()
        return worker

    def _serve_metrics(self) -> None:
        port = self.settings.metrics_port
        if port is not None and not self._metrics_served:
            s = self.settings
            try:
                serve_metrics(
                    port,
                    lambda: read_status(
                        self.redis, queue_name=s.queue_name, sweep_interval_s=s.sweep_interval_s
                    ),
                )
            except OSError as exc:
                # Loud and fatal: a process that cannot serve its metrics exits (its supervisor
                # restarts it) instead of running unobserved or idling.
                raise ConfigError(
                    [
                        f"CRM_METRICS_PORT: cannot serve metrics on port {port} "
                        f"({exc.strerror or exc}); another process holds it: pick a free port"
                    ]
                ) from None
            self._metrics_served = True

    def retry_failed(self, *, rule_id: str | None = None, now: datetime | None = None) -> list[str]:
        """Send every ``failed`` or ``unknown`` delivery (of ``rule_id``) again, on an operator's
        request: each is reset to ``queued`` atomically (so two operators cannot double it) and
        queued now; the worker re-checks it like any delivery (grace, opt-out, suppression)."""
        now = now or utc_now()
        keys = [
            key
            for key in list(self.ledger.in_state(RETRYABLE_STATES, rule_id=rule_id))
            if self.ledger.reset(key, now=now)
        ]
        for start in range(0, len(keys), DELIVERY_BATCH_SIZE):
            self.actor.send(keys[start : start + DELIVERY_BATCH_SIZE], as_of=now)
        return keys

    def run_once(self, now: datetime, *, timeout_s: float = 600.0) -> RunSummary:
        """One pass at ``now``, then deliver until every key it queued is final or waiting
        for a retry (retries stay queued for the next ``run``/``worker``)."""
        worker = self.start_worker()
        try:
            report = self.scheduler.run_pass(now)
            states = self.wait_for(report.queued, timeout_s=timeout_s)
        finally:
            worker.stop()
        return RunSummary(report, Counter(states.values()))

    def wait_for(
        self,
        keys: Iterable[str],
        *,
        timeout_s: float,
        poll_s: float = 0.05,
        keep_waiting: Callable[[], bool] | None = None,
    ) -> dict[str, str]:
        """Block until none of ``keys`` is in flight, ``timeout_s`` passed, sending is paused
        or ``keep_waiting`` says no (interrupted, no worker left to wait for); return their
        states.

        Keys are watched a window of ``WAIT_POLL_WINDOW`` at a time, oldest first, and a key
        seen final is not read again: polling 10,000 keys every interval would cost the
        workers it waits for a Redis round trip of 10,000 reads each time (bench/delivery.py
        waits like this)."""
        keys = list(keys)
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        pending = keys
        while pending:
            window = pending[:WAIT_POLL_WINDOW]
            seen = self.ledger.states(window)
            states.update(seen)
            moving = [key for key in window if seen[key] in IN_FLIGHT]
            pending = moving + pending[len(window) :]
            if not moving:
                continue  # this window is done: look at the next one at once
            if (
                time.monotonic() > deadline
                or self.pause.remaining(utc_now()) is not None
                or (keep_waiting is not None and not keep_waiting())
            ):
                # Out of time, or the relay refused us (nothing moves until the pause ends).
                states.update(self.ledger.states(pending[len(moving) :]))
                break
            time.sleep(poll_s)
        return {key: states[key] for key in keys}

    def run_forever(self, stop: threading.Event, *, scheduler: bool, worker: bool) -> None:
        """The long-running modes: scheduler, workers, or both, until ``stop`` is set."""
        running = self.start_worker() if worker else None
        sweeping = None
        if not worker:
            # A worker sweeps beside its threads (SweepMiddleware); a lone scheduler sweeps here.
            sweeping = threading.Thread(
                target=run_sweeper,
                args=(self.sweeper,),
                kwargs={"interval_s": self.settings.sweep_interval_s, "stop": stop},
                name="crm-sweeper",
                daemon=True,
            )
            sweeping.start()
        _settle_garbage_collector()
        try:
            if not worker:
                self._serve_metrics()
            if scheduler:
                run_scheduler(
                    self.scheduler,
                    LeaderLock(
                        self.redis,
                        ttl=timedelta(seconds=self.settings.effective_scheduler_lock_ttl_s),
                    ),
                    interval_s=self.settings.scheduler_interval_s,
                    stop=stop,
                )
            else:
                stop.wait()
        except Exception as exc:
            log.error("the %s cannot run: %s; exiting", "scheduler" if scheduler else "worker", exc)
            raise
        finally:
            stop.set()  # the sweeper thread ends too: a failed start never leaves an idle process
            if running is not None:
                running.stop()
            if sweeping is not None:
                sweeping.join()

    def close(self) -> None:
        if "channel" in self.__dict__:
            self.channel.close()
        events = self.__dict__.get("crm_events")
        if events is not None:
            events.close()
        if "broker" in self.__dict__:
            self.broker.close()
        if "redis" in self.__dict__ and self._redis is None:
            close_redis(self.redis, self._embedded)


def _settle_garbage_collector() -> None:
    """For a long-running process, once it is set up: what exists now (modules, compiled
    templates, rules) is never scanned again, and young objects are collected every
    ``GC_YOUNG_THRESHOLD`` allocations instead of 700. Each message allocates thousands of
    short-lived objects that reference counting frees anyway; the default spent several
    percent of a worker's CPU on collections that found nothing (bench/README.md)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
