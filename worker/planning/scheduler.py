"""The scheduler: passes that find due deliveries, claim them and queue them; a leader lock.

One pass at instant ``now``:

1. reload rules that changed (a broken edit keeps the last valid version);
2. plan: every delivery due within each rule's grace (:func:`worker.planning.plan.plan`);
3. claim each delivery key in the ledger — only the first pass ever to see a key owns it;
   a claimed message to a customer over the contact cap (:mod:`worker.planning.contact_policy`) is
   recorded as skipped with the reason instead of being queued;
4. queue the newly claimed keys in batches, then mark them queued.

Running continuously (:func:`run_scheduler`), step 2 reads the due-index planned ahead
(:mod:`worker.planning.ahead`) and only what changed in the CRM, instead of every record; the
claim and the steps after it are the same. The scheduler holds a Redis lock renewed every
pass and, while a pass runs, every third of its TTL by a thread (a full planning pass over
a large CRM takes minutes); a second scheduler waits as a standby and takes over when the
lock expires. A pass that lost the lock anyway (the process stalled) saves nothing of its plan.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import redis

from worker.constants import (
    DELIVERY_BATCH_SIZE,
    HEARTBEAT_INTERVAL,
    PASS_PROGRESS_INTERVAL,
    SCHEDULER_LAST_PASS_KEY,
    SCHEDULER_LOCK_KEY,
    SCHEDULER_LOCK_TTL,
    STANDBY_POLL,
)
from worker.errors import LeadershipLostError, SourceUnavailableError
from worker.localtime import utc_now
from worker.messages.rendering import TemplateRenderer
from worker.planning.ahead import AheadPlanner
from worker.planning.contact_policy import ContactPolicy, counted, customer_id_of
from worker.planning.events import Event, EventLog
from worker.planning.plan import PlannedDelivery, Skip, plan, plan_event
from worker.records.delivery_log import DeliveryLog, LogEntry
from worker.records.heartbeats import beat, leave, process_name
from worker.records.ledger import Ledger, skip_claimed
from worker.rules.catalog import RuleCatalog
from worker.sources.base import Source

log = logging.getLogger(__name__)


class BatchQueue(Protocol):
    """Where the scheduler hands claimed keys: the delivery queue
    (:class:`worker.delivery.actors.DeliveryActor`). A protocol, so that planning never imports
    delivery: delivery imports planning to re-check each delivery at send time."""

    def send(self, keys: Sequence[str], *, as_of: datetime, delay: timedelta | None = None) -> None:
        """Queue ``keys`` (one batch) for delivery as of ``as_of``."""

    def depth(self) -> int:
        """Messages waiting in the queue now."""


@dataclass
class PassReport:
    """What one scheduler pass did."""

    now: datetime
    queued: list[str] = field(default_factory=list)
    already_claimed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Queue depth when the pass queued its first batch, and batches queued since.
    backlog_at_start: int | None = None
    batches: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class Scheduler:
    """Runs passes; see the module docstring."""

    catalog: RuleCatalog
    source: Source
    ledger: Ledger
    actor: BatchQueue
    default_zone: ZoneInfo
    company: Mapping[str, str]
    contact_policy: ContactPolicy | None = None
    events: EventLog | None = None
    delivery_log: DeliveryLog | None = None
    renderer: TemplateRenderer | None = None
    #: Plans ahead into the due-index for :meth:`run_planned_pass`; None: every pass reads all.
    ahead: AheadPlanner | None = None
    # Rules left out for a missing template, with the reason already logged: a pass every
    # minute would otherwise repeat the same error until someone fixes the folder.
    _left_out: dict[str, str] = field(default_factory=dict)

    def run_pass(self, now: datetime, *, rule_ids: frozenset[str] | None = None) -> PassReport:
        """One pass at ``now``: claim and queue every delivery due and not yet claimed.

        ``rule_ids`` limits the pass to those rules (``crm-worker event`` runs its event rules).
        """
        self.catalog.refresh()
        broken = self._unusable_rules()
        if broken:
            wanted = rule_ids if rule_ids is not None else frozenset(r.id for r in self.catalog)
            rule_ids = wanted - broken.keys()
        items = plan(
            self.catalog,
            self.source,
            now,
            default_zone=self.default_zone,
            company=self.company,
            rule_ids=rule_ids,
            events=self.events,
        )
        return self._dispatch(items, now)

    def run_planned_pass(self, now: datetime, *, leader: str | None = None) -> PassReport:
        """:meth:`run_pass` at ``now`` through the due-index: what is due by the plan made
        ahead, after re-planning what changed in the CRM (:mod:`worker.planning.ahead`). The
        same deliveries are claimed; the CRM is read for the changes and the due records.
        ``leader``: the lock token this pass runs under (its plan is kept only while held)."""
        if self.ahead is None:
            return self.run_pass(now)
        self.catalog.refresh()
        broken = self._unusable_rules()
        due = self.ahead.prepare(now, left_out=broken.keys(), leader=leader)
        report = self._dispatch(due.items, now)
        due.finish()  # only now: a pass that failed before claiming leaves them for the next
        return report

    def leadership_changed(self) -> None:
        """This scheduler took or lost the leader lock: a plan made ahead before is not
        trusted (another scheduler may have changed the index meanwhile)."""
        if self.ahead is not None:
            self.ahead.forget()

    def react(self, event: Event, now: datetime) -> PassReport:
        """Claim and queue at once what the ``event`` rules send for ``event`` at ``now`` (the
        intakes: ``crm-worker event`` and the HTTP intake). Other events of its type are left
        to the passes, so each call costs one event's lookups, however busy the CRM is."""
        self.catalog.refresh()
        broken = self._unusable_rules()
        items = plan_event(
            self.catalog,
            self.source,
            event,
            now,
            default_zone=self.default_zone,
            company=self.company,
        )
        return self._dispatch(
            (i for i in items if i.rule_id not in broken), now, summary_level=logging.DEBUG
        )

    def _unusable_rules(self) -> dict[str, str]:
        """Rules whose messages could not be rendered (a template folder missing or misnamed),
        with the reason. They are left out of the pass instead of claiming occurrences that
        would all fail: once the template is fixed, the next pass within each rule's grace
        sends them."""
        if self.renderer is None:
            return {}
        broken: dict[str, str] = {}
        for rule in self.catalog:
            if not rule.enabled:
                continue
            for action in rule.send:
                reason = self.renderer.missing(action.template)
                if reason is not None:
                    broken[rule.id] = reason
                    if self._left_out.get(rule.id) != reason:
                        log.error(
                            "rule %s is not run: %s; fix it (crm-worker check shows every problem)",
                            rule.id,
                            reason,
                        )
                    break
        for rule_id in self._left_out.keys() - broken.keys():
            log.info("rule %s runs again: its templates are there", rule_id)
        self._left_out = broken
        return broken

    def _dispatch(
        self,
        items: Iterable[PlannedDelivery | Skip],
        now: datetime,
        *,
        summary_level: int = logging.INFO,
    ) -> PassReport:
        """Claim, cap and queue planned deliveries in batches; the summary line is logged at
        ``summary_level`` (a pass: INFO; one CRM event: DEBUG, as each event is no change of
        the system's state)."""
        report = PassReport(now)
        due: list[PlannedDelivery] = []
        progress_at = time.monotonic() + PASS_PROGRESS_INTERVAL.total_seconds()
        for item in items:
            if time.monotonic() > progress_at:
                progress_at = time.monotonic() + PASS_PROGRESS_INTERVAL.total_seconds()
                log.info(
                    "pass at %s: %d queued so far, %d already claimed, %d skipped",
                    now.isoformat(),
                    len(report.queued),
                    report.already_claimed,
                    report.skipped_total,
                )
            if isinstance(item, Skip):
                report.skipped[f"{item.rule_id}: {_reason_kind(item.reason)}"] += 1
                continue
            due.append(item)
            if len(due) >= DELIVERY_BATCH_SIZE:
                self._claim_and_enqueue(due, now, report)
                due = []
        if due:
            self._claim_and_enqueue(due, now, report)
        log.log(
            summary_level,
            "pass at %s: %d queued, %d already claimed, %d skipped",
            now.isoformat(),
            len(report.queued),
            report.already_claimed,
            report.skipped_total,
        )
        return report

    def _within_cap(self, item: PlannedDelivery, now: datetime) -> bool:
        """Count a claimed delivery against the contact cap; over it, record it as skipped."""
        policy = self.contact_policy
        customer_id = customer_id_of(item.context)
        rule = self.catalog.get(item.rule_id)
        if policy is None or customer_id is None or rule is None:
            return True
        if not counted(rule, item.action) or policy.admit(customer_id, item.key, now):
            return True
        reason = policy.reason()
        skip_claimed(self.ledger, item.key, reason=reason, now=now)
        if self.delivery_log is not None:  # every outcome is in the log, a capped skip too
            self.delivery_log.record(
                LogEntry(
                    at=now,
                    status="skipped",
                    rule=item.rule_id,
                    key=item.key,
                    channel=item.action.channel,
                    recipient=item.to,
                    reason=reason,
                )
            )
        log.debug("skipped %s: %s", item.key, reason)
        return False

    def _claim_and_enqueue(
        self, due: list[PlannedDelivery], now: datetime, report: PassReport
    ) -> None:
        # One round trip claims the whole batch: a pass may find thousands of deliveries due.
        claimed = self.ledger.claim_many([(i.key, i.rule_id, i.due_at) for i in due], now=now)
        keys = []
        for item, ok in zip(due, claimed, strict=True):
            if not ok:
                report.already_claimed += 1
            elif not self._within_cap(item, now):
                report.skipped[f"{item.rule_id}: contact cap"] += 1
            else:
                keys.append(item.key)
        if keys:
            self.actor.send(keys, as_of=now)
            self.ledger.mark_queued(keys, backlog=self._backlog(report))
            report.queued.extend(keys)

    def _backlog(self, report: PassReport) -> int:
        """Dramatiq messages ahead of the batch just queued: read once per pass, then counted
        on (other processes may add a few; the deadline's allowance is generous)."""
        if report.backlog_at_start is None:
            report.backlog_at_start = self.actor.depth()
            report.batches = 0
        report.batches += 1
        return report.backlog_at_start + report.batches


def _reason_kind(reason: str) -> str:
    """Group skip reasons for the summary (``birthday '0000-00-00' is not usable`` → field)."""
    return reason.split(" (", 1)[0].split(":", 1)[0][:60]


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LeaderLock:
    """A Redis lock that one scheduler holds while it runs passes; others stand by. Its value
    (``token``) starts with the holder's ``host:pid``, which ``crm-worker status`` shows."""

    def __init__(self, client: redis.Redis, *, ttl: timedelta = SCHEDULER_LOCK_TTL) -> None:
        self.client = client
        self.token = f"{process_name()} {uuid.uuid4().hex}"
        self._renew = client.register_script(_RENEW)
        self.ttl_ms = int(ttl.total_seconds() * 1000)

    def acquire(self) -> bool:
        """Take or keep the lock; True while this instance is the leader."""
        if self._renew(keys=[SCHEDULER_LOCK_KEY], args=[self.token, self.ttl_ms]):
            return True
        return bool(self.client.set(SCHEDULER_LOCK_KEY, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        """Give the lock up (if held) so a standby takes over at once."""
        self._renew(keys=[SCHEDULER_LOCK_KEY], args=[self.token, 1])

    @contextlib.contextmanager
    def renewing(self) -> Iterator[threading.Event]:
        """Keep the lock while the block runs (a pass): a thread renews it every third of
        its TTL. The event yielded is set if the lock was found taken by another scheduler."""
        lost = threading.Event()
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.ttl_ms / 3000):
                try:
                    held = self._renew(keys=[SCHEDULER_LOCK_KEY], args=[self.token, self.ttl_ms])
                except redis.RedisError:
                    continue  # the pass itself reports a lost Redis
                if not held:
                    lost.set()
                    return

        thread = threading.Thread(target=renew, name="scheduler-lock-renewal", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            done.set()
            thread.join()


def record_pass(client: redis.Redis, report: PassReport, *, by: str, took_s: float) -> None:
    """Keep what the last pass did, and who ran it (the leading scheduler or a ``run --once``),
    for ``crm-worker status``."""
    client.hset(
        SCHEDULER_LAST_PASS_KEY,
        mapping={
            "at": f"{utc_now().timestamp():.3f}",
            "by": by,
            "took_s": f"{took_s:.2f}",
            "queued": len(report.queued),
            "already_claimed": report.already_claimed,
            "skipped": report.skipped_total,
        },
    )


def run_scheduler(
    scheduler: Scheduler,
    lock: LeaderLock,
    *,
    interval_s: float,
    stop: threading.Event,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Run passes every ``interval_s`` while leader, until ``stop`` is set; a standby tries
    the lock at least every ``STANDBY_POLL``."""
    leading = False
    redis_lost = False
    me = process_name()
    while not stop.is_set():
        try:
            acquired = lock.acquire()
            if redis_lost:
                log.info("Redis back; the scheduler runs again")
                redis_lost = False
            if acquired:
                if not leading:
                    log.info("scheduler is the leader")
                    scheduler.leadership_changed()
                leading = True
                started = time.monotonic()
                # The lock is renewed and the heartbeat written while the pass runs: a long pass
                # keeps its leadership and is not taken for a dead scheduler (`health`).
                with lock.renewing(), _beating(lock.client, me):
                    report = scheduler.run_planned_pass(clock(), leader=lock.token)
                record_pass(lock.client, report, by=me, took_s=time.monotonic() - started)
            else:
                if leading:
                    log.warning("scheduler lost the lock; standing by")
                    scheduler.leadership_changed()
                leading = False
        except redis.RedisError as exc:
            # Once per outage, not once per interval: what was claimed and not queued is taken
            # over by the sweepers once Redis is back.
            if not redis_lost:
                log.warning("Redis lost (%s); the scheduler retries every interval", exc)
            redis_lost = True
        except LeadershipLostError as exc:
            log.warning("scheduler lost the lock during a pass: %s; standing by", exc)
            scheduler.leadership_changed()
            leading = False
        except SourceUnavailableError as exc:
            # Nothing is lost: the next pass plans again within each rule's grace, and a key
            # claimed but not yet queued is claimable again after CLAIM_STALE_AFTER.
            log.error("scheduler pass failed: %s; retrying next interval", exc)
        except Exception:
            log.exception("scheduler pass failed; retrying next interval")
        _wait_beating(
            lock.client,
            me,
            interval_s if leading else min(interval_s, STANDBY_POLL.total_seconds()),
            stop,
        )
    # Stopping while Redis is gone: the lock expires by itself (its TTL); no traceback.
    with contextlib.suppress(redis.RedisError):
        lock.release()
    leave(lock.client, "scheduler", me)


@contextlib.contextmanager
def _beating(client: redis.Redis, me: str) -> Iterator[None]:
    """While the block runs (a pass), write this scheduler's heartbeat at once and then every
    ``HEARTBEAT_INTERVAL`` from a side thread: a pass longer than the health check's 30 s is
    not taken for a dead scheduler (and killed by a liveness probe, again and again)."""
    done = threading.Event()
    thread = threading.Thread(
        target=_wait_beating,
        args=(client, me, float("inf"), done),
        name="crm-scheduler-heartbeat",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _wait_beating(client: redis.Redis, me: str, wait_s: float, stop: threading.Event) -> None:
    """Wait ``wait_s`` (or until ``stop``), writing this scheduler's heartbeat at once and then
    every ``HEARTBEAT_INTERVAL`` (``crm-worker health scheduler``): the loop is alive between
    passes too, leader or standby."""
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(redis.RedisError):  # the loop above reports a lost Redis
            beat(client, "scheduler", me, now=utc_now().timestamp())
        left = deadline - time.monotonic()
        if left <= 0 or stop.wait(min(left, HEARTBEAT_INTERVAL.total_seconds())):
            return
