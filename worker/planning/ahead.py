"""Planning ahead: a pass costs what is due and what changed, not the size of the CRM.

A **full pass** reads every record once and plans the deliveries due up to a horizon
(``CRM_PLAN_HORIZON_H``, 36 hours by default) into the due-index
(:mod:`worker.planning.due_index`). It runs when the scheduler starts, when the rules change
and an hour (``PLAN_AHEAD_MARGIN``) before the planned horizon ends.

Every **pass in between**

1. asks the source what changed since the last pass: rows whose change column
   (``changed_since`` in the SQL mapping) is past the entity's watermark, less an overlap
   (``CRM_CHANGE_OVERLAP_S``: a transaction that committed late, a CRM clock behind ours), and
   the records the CRM's events named (:func:`~worker.planning.due_index.mark_dirty`);
2. re-plans those records (a changed customer: with their purchases and complaints, whose
   local hours and conditions follow the customer) and replaces their index entries;
3. takes the members due by now, reads their records fresh and evaluates their rules in each
   rule's own window, exactly as a full pass at this instant would: what is still due is
   claimed by its occurrence key in the ledger (:class:`worker.planning.scheduler.Scheduler`).

Rules on an entity the source cannot follow (a SQL mapping without ``changed_since``, a
customer entity without it for purchase and complaint rules, a source without change
tracking) and ``event`` rules run as before: their records are read at every pass. A CSV
folder is followed by its files: a file written again (its time or size changed) sends the
next pass back to a full pass, as which rows changed is unknown.

The send-time re-check is untouched: a change the worker did not see yet never sends a wrong
message, and the ledger claim keeps every occurrence to one message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from worker.constants import PLAN_AHEAD_MARGIN, PLAN_LOOKUP_CHUNK
from worker.errors import LeadershipLostError
from worker.planning.due_index import DueIndex, Entry, PlanState, record_ref
from worker.planning.events import EventLog
from worker.planning.plan import (
    DeliveryKey,
    PlannedDelivery,
    Related,
    Skip,
    customer_id_of,
    plan,
    plan_ahead,
    plan_subject,
)
from worker.planning.triggers import TriggerWindow
from worker.rules.catalog import RuleCatalog
from worker.rules.models import EventTrigger, Rule
from worker.sources.base import ChangeFeed, Record, Source

log = logging.getLogger(__name__)

CUSTOMER = "customer"


@dataclass
class DuePass:
    """What one pass found due (``items``, consumed once) and, once they are claimed,
    :meth:`finish` to drop the index members that were checked."""

    items: Iterator[PlannedDelivery | Skip]
    checked: list[str] = field(default_factory=list)
    index: DueIndex | None = None

    def finish(self) -> None:
        if self.index is not None and self.checked:
            self.index.done(self.checked)


@dataclass
class AheadPlanner:
    """Keeps the due-index and answers each pass with what is due; see the module docstring."""

    catalog: RuleCatalog
    source: Source
    index: DueIndex
    default_zone: ZoneInfo
    company: Mapping[str, str]
    horizon: timedelta
    overlap: timedelta
    events: EventLog | None = None
    #: Set once this process made a full pass, reset when it stops leading (:meth:`forget`):
    #: a new leader plans afresh, whatever index another scheduler left.
    _planned: bool = False
    #: What the last pass did, for logs and the bench: "full" or "changes", and how many
    #: records it re-planned.
    last_kind: str = ""
    last_replanned: int = 0
    #: The leader lock's token of the pass under way (None: a pass run once, without a lock).
    _leader: str | None = None

    def prepare(
        self, now: datetime, *, left_out: Collection[str] = (), leader: str | None = None
    ) -> DuePass:
        """Bring the index up to date at ``now`` and return what is due (rules in
        ``left_out``, e.g. with a missing template, are neither evaluated nor dropped).

        ``leader``: the scheduler's lock token; the plan and the watermarks are only saved
        while the lock is still that token's, else :class:`LeadershipLostError` is raised
        and what this pass planned is dropped."""
        self._leader = leader
        enabled = [r for r in self.catalog if r.enabled]
        followed = self.followed({r.trigger.spec.entity for r in enabled})
        indexed = [
            r
            for r in enabled
            if not isinstance(r.trigger.spec, EventTrigger) and r.trigger.spec.entity in followed
        ]
        rest = frozenset(r.id for r in enabled if r not in indexed) - frozenset(left_out)
        by_entity: dict[str, list[Rule]] = {}
        for rule in indexed:
            by_entity.setdefault(rule.trigger.spec.entity, []).append(rule)
        if by_entity:
            self._update(now, by_entity)
        else:
            # Nothing to plan: no index kept, and the CRM's events stop marking records.
            self.index.drop()
            self._planned = False
        due = DuePass(iter(()), index=self.index)
        usable = {r.id: r for r in indexed if r.id not in left_out}
        due.items = self._chain(
            self._due(now, usable, due.checked) if by_entity else iter(()),
            self._read_every_pass(now, rest),
        )
        return due

    def forget(self) -> None:
        """This scheduler stopped leading: whatever the index holds when it leads again was
        left by another one, so its next pass plans afresh."""
        self._planned = False

    def followed(self, entities: Iterable[str]) -> frozenset[str]:
        """The entities whose changes the source can name (and, but for the customer, whose
        customers' changes too: a customer's zone and opt-in decide their records' messages)."""
        feed = self.source
        if not isinstance(feed, ChangeFeed) or not feed.follows(CUSTOMER):
            return frozenset()
        return frozenset(e for e in entities if feed.follows(e))

    # -- keeping the index ---------------------------------------------------------------------

    def _update(self, now: datetime, by_entity: dict[str, list[Rule]]) -> None:
        state = self.index.state()
        fingerprint = _fingerprint(by_entity, self.default_zone, self.horizon)
        reason = None
        if not self._planned:
            reason = "the scheduler started or took over as leader"
        elif state.fingerprint != fingerprint:
            reason = "the rules changed"
        elif state.horizon_end is None or now + PLAN_AHEAD_MARGIN >= state.horizon_end:
            reason = "the planned horizon ends"
        elif state.overflow:
            reason = "the CRM reported more changed records than are kept one by one"
        if reason is None and not self._follow_changes(now, by_entity, state):
            reason = "the source cannot say what changed (a CSV file written again)"
        if reason is not None:
            self._full(now, by_entity, fingerprint, reason)

    def _full(
        self, now: datetime, by_entity: dict[str, list[Rule]], fingerprint: str, reason: str
    ) -> None:
        feed = self.source
        assert isinstance(feed, ChangeFeed)
        entities = sorted(set(by_entity) | {CUSTOMER})
        # Events mark records from now on, and the marks taken now (and the overflow flag)
        # are in this plan; watermarks before the read: a row written during it is read
        # again next pass.
        self.index.begin()
        self.index.take_dirty(full=True)
        watermarks = {e: feed.watermark(e) for e in entities}
        until = now + self.horizon
        entries = (
            entry
            for entity, rules in by_entity.items()
            for entry in self._entries(rules, now, until, None)
        )
        count = self.index.rebuild(
            entries,
            PlanState(until, fingerprint, {e: m for e, m in watermarks.items() if m}),
            leader=self._leader,
        )
        if count is None:
            self._lost("a full plan")
        self.index.clean()
        self._planned = True
        self.last_kind, self.last_replanned = "full", -1
        log.info(
            "planned ahead to %s (%s): %d deliveries in the due-index",
            until.isoformat(),
            reason,
            count,
        )

    def _follow_changes(
        self, now: datetime, by_entity: dict[str, list[Rule]], state: PlanState
    ) -> bool:
        """Re-plan what changed; False when the source cannot say what (a full pass then)."""
        feed = self.source
        assert isinstance(feed, ChangeFeed) and state.horizon_end is not None
        changed: dict[str, dict[str, Record | None]] = {}
        watermarks: dict[str, str | None] = {}
        for entity in sorted(set(by_entity) | {CUSTOMER}):
            found = feed.changed(entity, state.watermarks.get(entity), overlap=self.overlap)
            if found is None:
                return False
            watermarks[entity] = found.watermark
            changed.setdefault(entity, {}).update({r.id: r for r in found.records})
        dirty = self.index.take_dirty()
        named: dict[str, set[str]] = {}
        for ref in dirty:
            entity, _, record_id = ref.partition(":")
            if record_id and record_id not in changed.get(entity, {}):
                named.setdefault(entity, set()).add(record_id)
        for entity, ids in named.items():
            if entity in by_entity or entity == CUSTOMER:
                changed.setdefault(entity, {}).update(self.source.get_many(entity, ids))
        customers = list(changed.get(CUSTOMER, {}))
        for entity in by_entity:
            if entity != CUSTOMER and customers:
                for record in feed.records_of(entity, customers):
                    changed.setdefault(entity, {}).setdefault(record.id, record)
        replanned = 0
        for entity, records in changed.items():
            rules = by_entity.get(entity)
            if not rules or not records:
                continue
            present = [r for r in records.values() if r is not None]
            entries = list(self._entries(rules, now, state.horizon_end, present))
            self.index.replace((record_ref(entity, i) for i in records), entries)
            replanned += len(records)
        if not self.index.save_watermarks(watermarks, leader=self._leader):
            self._lost("the changes' watermarks")
        self.index.clean()
        self.last_kind, self.last_replanned = "changes", replanned
        if replanned:
            log.info("re-planned %d changed records", replanned)
        return True

    def _lost(self, what: str) -> None:
        """The lock went to another scheduler during this pass: its plan stands, not ours."""
        self._planned = False
        raise LeadershipLostError(
            f"another scheduler took the leader lock during this pass; {what} was dropped"
        )

    def _entries(
        self, rules: list[Rule], now: datetime, until: datetime, records: list[Record] | None
    ) -> Iterator[Entry]:
        for item in plan_ahead(
            rules,
            self.source,
            now,
            until,
            default_zone=self.default_zone,
            company=self.company,
            records=records,
        ):
            if isinstance(item, PlannedDelivery):
                occurrence = item.occurrence
                ref = record_ref(occurrence.entity, occurrence.record_id)
                yield Entry(item.key, ref, occurrence.due_at)

    # -- what is due -----------------------------------------------------------------------------

    def _due(
        self, now: datetime, rules: Mapping[str, Rule], checked: list[str]
    ) -> Iterator[PlannedDelivery | Skip]:
        """The index's members due by ``now``, each record read fresh and its rules evaluated
        in their windows at ``now``: what a full pass at ``now`` finds for those records."""
        wanted: dict[tuple[str, str], set[str]] = {}  # (entity, id) → rule ids
        for key, _ in self.index.due(now):
            try:
                parsed = DeliveryKey.parse(key)
            except ValueError:
                checked.append(key)  # not ours to keep
                continue
            if parsed.rule_id not in rules:
                # A rule left out this pass keeps its members for when it runs again.
                continue
            wanted.setdefault((parsed.entity, parsed.record_id), set()).add(parsed.rule_id)
            checked.append(key)
        by_entity: dict[str, list[str]] = {}
        for entity, record_id in wanted:
            by_entity.setdefault(entity, []).append(record_id)
        for entity, ids in by_entity.items():
            for start in range(0, len(ids), PLAN_LOOKUP_CHUNK):
                chunk = ids[start : start + PLAN_LOOKUP_CHUNK]
                records = self.source.get_many(entity, chunk)
                owners = {
                    customer_id
                    for record in records.values()
                    if record is not None and (customer_id := customer_id_of(record))
                }
                customers = self.source.get_many(CUSTOMER, owners) if owners else None
                for record_id in chunk:
                    record = records.get(record_id)
                    if record is None:
                        continue  # deleted since it was planned: nothing is due
                    for rule_id in sorted(wanted[(entity, record_id)]):
                        rule = rules[rule_id]
                        yield from plan_subject(
                            rule,
                            Related(rule, record, self.source, customers=customers),
                            now,
                            default_zone=self.default_zone,
                            company=self.company,
                            window=TriggerWindow(now - rule.grace, now),
                        )

    def _read_every_pass(
        self, now: datetime, rule_ids: frozenset[str]
    ) -> Iterator[PlannedDelivery | Skip]:
        if not rule_ids:
            return iter(())
        return plan(
            self.catalog,
            self.source,
            now,
            default_zone=self.default_zone,
            company=self.company,
            rule_ids=rule_ids,
            events=self.events,
        )

    @staticmethod
    def _chain(
        *parts: Iterator[PlannedDelivery | Skip],
    ) -> Iterator[PlannedDelivery | Skip]:
        for part in parts:
            yield from part


def _fingerprint(by_entity: Mapping[str, list[Rule]], zone: ZoneInfo, horizon: timedelta) -> str:
    """Changes whenever a planned rule, the default zone or the horizon does: the plan is
    then made afresh."""
    digest = hashlib.sha256(f"{zone.key}|{horizon.total_seconds()}".encode())
    for entity in sorted(by_entity):
        for rule in sorted(by_entity[entity], key=lambda r: r.id):
            digest.update(rule.model_dump_json().encode())
    return digest.hexdigest()[:16]
