"""From rules and CRM records to the deliveries that are due: the heart of a scheduler pass.

Pure apart from reading the source: nothing is claimed, queued or sent here, which is what makes
``crm-worker plan`` an honest dry run. The same :func:`prepare_delivery` runs again at send time
(:mod:`worker.delivery.send`), so plan and send apply one set of checks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from worker.constants import PLAN_LOOKUP_CHUNK
from worker.errors import AddressError
from worker.messages.addresses import normalize_recipient
from worker.planning.conditions import ConditionError, compile_condition
from worker.planning.context import message_context
from worker.planning.events import Event, EventLog
from worker.planning.triggers import (
    NotApplicable,
    Occurrence,
    Screen,
    TriggerWindow,
    ValueScreen,
    evaluate,
    event_occurrence,
    screen,
    screen_value,
)
from worker.rules.catalog import RuleCatalog
from worker.rules.models import EventTrigger, Rule, SendAction
from worker.sources.base import Record, RowKeep, Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryKey:
    """``rule:entity:record:tag/action``: one message of one occurrence."""

    rule_id: str
    entity: str
    record_id: str
    tag: str
    action_id: str

    @classmethod
    def parse(cls, key: str) -> DeliveryKey:
        occurrence, slash, action = key.partition("/")
        parts = occurrence.split(":")
        if not slash or len(parts) != 4 or not all(parts) or not action:
            raise ValueError(f"not a delivery key: {key!r}")
        return cls(parts[0], parts[1], parts[2], parts[3], action)

    @classmethod
    def of(cls, occurrence: Occurrence, action_id: str) -> DeliveryKey:
        return cls(
            occurrence.rule_id, occurrence.entity, occurrence.record_id, occurrence.tag, action_id
        )

    def __str__(self) -> str:
        return f"{self.rule_id}:{self.entity}:{self.record_id}:{self.tag}/{self.action_id}"


@dataclass(frozen=True)
class StaffReader:
    """Language and time zone of internal mail (alerts to account managers) whose send step
    names none: ``CRM_INTERNAL_LOCALE`` / ``CRM_INTERNAL_TIMEZONE``."""

    locale: str | None
    zone: ZoneInfo


@dataclass(frozen=True)
class PlannedDelivery:
    """A message that is due: who gets which template, through which channel, and when."""

    key: str
    occurrence: Occurrence
    action: SendAction
    to: str
    recipient_name: str
    #: The reader's language and time zone: the customer's own for a message to the customer;
    #: the send step's ``locale:``/``timezone:`` for staff, None meaning the internal defaults
    #: (CRM_INTERNAL_LOCALE / CRM_INTERNAL_TIMEZONE), applied where the message is written.
    locale: str | None
    context: Mapping[str, object]
    zone: ZoneInfo | None = None
    #: A marketing message (unsubscribe links, stopped by an unsubscribe) or a service one.
    marketing: bool = True

    @property
    def rule_id(self) -> str:
        return self.occurrence.rule_id

    def reader(self, default_zone: ZoneInfo, staff: StaffReader) -> tuple[str | None, ZoneInfo]:
        """The language and zone this message is written in: the customer's (their zone, else
        ``default_zone``), or for staff the send step's, else ``staff``'s defaults."""
        if self.action.to_customer:
            return self.locale, self.zone or default_zone
        return self.locale or staff.locale, self.zone or staff.zone

    @property
    def due_at(self) -> datetime:
        return self.occurrence.due_at


@dataclass(frozen=True)
class Skip:
    """An occurrence (or record) that produces no message, and why."""

    rule_id: str
    entity: str
    record_id: str
    reason: str
    key: str = ""


def customer_id_of(record: Record) -> str | None:
    """The id of the customer a purchase or complaint belongs to (``None`` for a customer, or
    when the record names none)."""
    customer_id = record["customer_id"]
    if record.entity != "customer" and isinstance(customer_id, str) and customer_id:
        return customer_id
    return None


def subject_records(
    rule: Rule,
    record: Record,
    source: Source,
    customers: Mapping[str, Record | None] | None = None,
) -> dict[str, Record]:
    """The records a message of ``rule`` about ``record`` is built from, by entity name
    (``customers``: customers already fetched for a chunk of records, by id)."""
    records = {record.entity: record}
    customer_id = customer_id_of(record)
    if customer_id is not None:
        if customers is not None and customer_id in customers:
            customer = customers[customer_id]
        else:
            customer = source.get("customer", customer_id)
        if customer is not None:
            records["customer"] = customer
    return records


class Related:
    """The records around one subject record, read from the source once and only when needed:
    a yearly rule looks at the customer (for the time zone) only near the date."""

    def __init__(
        self,
        rule: Rule,
        record: Record,
        source: Source,
        event: Event | None = None,
        customers: Mapping[str, Record | None] | None = None,
    ):
        self.rule = rule
        self.record = record
        self.source = source
        self.event = event
        self.customers = customers
        self._records: dict[str, Record] | None = None

    def records(self) -> dict[str, Record]:
        """``subject_records`` plus the ``event`` an event rule fires for."""
        if self._records is None:
            self._records = subject_records(self.rule, self.record, self.source, self.customers)
            if self.event is not None:
                self._records["event"] = self.event.as_record()
        return self._records

    def customer(self) -> Record | None:
        return self.records().get("customer")


def belongs_to(record: Record, customer_id: str) -> bool:
    """Is ``record`` the customer ``customer_id`` or one of that customer's records?"""
    if record.entity == "customer":
        return record.id == customer_id
    return str(record["customer_id"] or "") == customer_id


def prepare_delivery(
    rule: Rule,
    action: SendAction,
    occurrence: Occurrence,
    records: Mapping[str, Record],
    company: Mapping[str, str],
) -> PlannedDelivery | Skip:
    """Apply the rule's condition and resolve the recipient; the same checks at plan and send."""
    key = str(DeliveryKey.of(occurrence, action.action_id))
    context = message_context(records, occurrence=occurrence, company=company)

    def skip(reason: str) -> Skip:
        return Skip(rule.id, occurrence.entity, occurrence.record_id, reason, key)

    if rule.when:
        try:
            if not compile_condition(rule.when)(context):
                return skip(f"condition is false: {rule.when}")
        except ConditionError as exc:
            return skip(str(exc))
    entity, _, name = action.to.partition(".")
    target = context.get(entity)
    if not isinstance(target, Mapping):
        return skip(f"no {entity} record for {action.to}")
    try:
        address = normalize_recipient(target.get(name))
    except AddressError as exc:
        return skip(f"{action.to}: {exc.reason} ({exc.address!r})")
    customer = context.get("customer")
    name_parts = []
    if action.to_customer:
        # A message is written for its reader: the customer's language and calendar.
        locale, zone = None, occurrence.zone
        if isinstance(customer, Mapping):
            name_parts = [str(customer.get(f) or "") for f in ("first_name", "last_name")]
            locale = str(customer.get("locale") or "") or None
    else:
        locale = action.locale
        zone = ZoneInfo(action.timezone) if action.timezone else None
    return PlannedDelivery(
        key=key,
        occurrence=occurrence,
        action=action,
        to=address,
        recipient_name=" ".join(p for p in name_parts if p),
        locale=locale,
        context=context,
        zone=zone,
        marketing=rule.kind == "marketing",
    )


def plan(
    catalog: RuleCatalog,
    source: Source,
    now: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    rule_ids: frozenset[str] | None = None,
    customer_id: str | None = None,
    events: EventLog | None = None,
) -> Iterator[PlannedDelivery | Skip]:
    """Every delivery due at ``now`` (and every skip, with its reason), rule by rule.

    A rule's window is ``(now - grace, now]``: what fell due within its catch-up grace. Whether
    it was already sent is the ledger's business, not the plan's.
    ``rule_ids`` and ``customer_id`` narrow the pass (``plan --rule``, ``plan --customer``);
    ``events`` is where ``event`` rules find what the CRM reported (none: they are idle).
    """
    chosen = [r for r in catalog if r.enabled and (rule_ids is None or r.id in rule_ids)]
    # Rules on the same entity share one read of it (two rules on purchases: one read of a
    # million rows, not two), screened and evaluated in chunks (_plan_entity); events and one
    # customer's records keep the per-rule path.
    shared: dict[str, list[Rule]] = {}
    if customer_id is None:
        for rule in chosen:
            if not isinstance(rule.trigger.spec, EventTrigger):
                shared.setdefault(rule.trigger.spec.entity, []).append(rule)
    waiting: dict[str, list[PlannedDelivery | Skip]] = {}  # found for a rule before its turn
    for rule in chosen:
        group = shared.get(rule.trigger.spec.entity, [])
        if rule in group:
            if rule is group[0]:  # the group's read comes with its first rule
                yield from _plan_entity(group, source, now, default_zone, company, waiting)
            yield from waiting.pop(rule.id, [])
            continue
        window = TriggerWindow(now - rule.grace, now)  # once per rule, not per record
        for subject in subjects(rule, source, now, customer_id=customer_id, events=events):
            if isinstance(subject, Skip):
                yield subject
                continue
            yield from plan_subject(
                rule, subject, now, default_zone=default_zone, company=company, window=window
            )


def _plan_entity(
    rules: list[Rule],
    source: Source,
    now: datetime,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    waiting: dict[str, list[PlannedDelivery | Skip]],
    *,
    until: datetime | None = None,
    records: Iterable[Record] | None = None,
) -> Iterator[PlannedDelivery | Skip]:
    """Every rule of ``rules`` (all on one entity) over one read of the entity's records. The
    first rule's findings are yielded at once; the others' wait in ``waiting`` for their turn
    (``plan`` goes rule by rule): only due records and skips, a small share of the rows.

    Each rule's screen (:func:`worker.planning.triggers.screen`) drops the rows that cannot be due
    before anything else is looked at; the rows left are evaluated in chunks of
    ``PLAN_LOOKUP_CHUNK``, their customers fetched with one ``get_many`` per chunk.

    ``until`` extends each rule's window past ``now`` (planning ahead: :func:`plan_ahead`);
    ``records`` replaces the read of every record (the changed ones)."""
    checks: list[tuple[Rule, TriggerWindow, Screen | None]] = []
    for rule in rules:
        window = TriggerWindow(now - rule.grace, until or now)  # once per rule, not per record
        checks.append((rule, window, screen(rule, window, _month_days(window))))
    for rule in rules[1:]:
        waiting[rule.id] = []
    chunk: list[tuple[Record, list[int]]] = []
    entity = rules[0].trigger.spec.entity
    read = source.iter_records(entity, _row_keep(checks)) if records is None else records
    for record in read:
        passed = [n for n, (_, _, test) in enumerate(checks) if test is None or test(record)]
        if passed:
            chunk.append((record, passed))
            if len(chunk) == PLAN_LOOKUP_CHUNK:
                yield from _plan_chunk(chunk, checks, source, now, default_zone, company, waiting)
                chunk = []
    yield from _plan_chunk(chunk, checks, source, now, default_zone, company, waiting)


def plan_ahead(
    rules: list[Rule],
    source: Source,
    now: datetime,
    until: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    records: Iterable[Record] | None = None,
) -> Iterator[PlannedDelivery | Skip]:
    """Every delivery of ``rules`` (none an ``event`` rule, all on one entity) due from each
    rule's grace before ``now`` up to ``until``, over one read of the entity (or over
    ``records`` only: the changed ones). The same screens, chunks and checks as :func:`plan`:
    what a pass at any instant up to ``until`` finds due, as the data stands now."""
    waiting: dict[str, list[PlannedDelivery | Skip]] = {}
    yield from _plan_entity(
        rules, source, now, default_zone, company, waiting, until=until, records=records
    )
    for found in waiting.values():
        yield from found


def _row_keep(checks: list[tuple[Rule, TriggerWindow, Screen | None]]) -> RowKeep | None:
    """The rules' screens as a hint on the rows' typed fields (a row any rule may find due is
    kept); None when a rule has no screen."""
    tests: dict[str, list[ValueScreen]] = {}
    for rule, window, _ in checks:
        found = screen_value(rule, window, _month_days(window))
        if found is None:
            return None
        tests.setdefault(found[0], []).append(found[1])
    return {name: each[0] if len(each) == 1 else _any_of(each) for name, each in tests.items()}


def _any_of(tests: list[ValueScreen]) -> ValueScreen:
    def keep(value: object, unusable: bool) -> bool:
        return any(test(value, unusable) for test in tests)

    return keep


def _plan_chunk(
    chunk: list[tuple[Record, list[int]]],
    checks: list[tuple[Rule, TriggerWindow, Screen | None]],
    source: Source,
    now: datetime,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    waiting: dict[str, list[PlannedDelivery | Skip]],
) -> Iterator[PlannedDelivery | Skip]:
    """``_plan_entity`` for the screened records of one chunk, in their order. Customers are
    fetched for the records a screen let through; a rule without a screen (``unresolved``)
    needs few of them, looked up one by one when a record is due."""
    screened = {n for n, (_, _, test) in enumerate(checks) if test is not None}
    ids = {
        customer_id
        for record, passed in chunk
        if not screened.isdisjoint(passed) and (customer_id := customer_id_of(record))
    }
    customers = source.get_many("customer", ids) if ids else None
    for record, passed in chunk:
        for n in passed:
            rule, window, _ = checks[n]
            found = plan_subject(
                rule,
                Related(rule, record, source, customers=customers),
                now,
                default_zone=default_zone,
                company=company,
                window=window,
            )
            if n == 0:
                yield from found
            else:
                waiting[rule.id].extend(found)


def subjects(
    rule: Rule,
    source: Source,
    now: datetime,
    *,
    customer_id: str | None = None,
    events: EventLog | None = None,
) -> Iterator[Related | Skip]:
    """The records ``rule`` is evaluated for at ``now`` (for ``event`` rules: the records of
    the events reported within its grace), each with its related records."""
    spec = rule.trigger.spec
    entity = spec.entity
    if isinstance(spec, EventTrigger):
        if events is None:
            return
        for event in events.between(spec.type, now - rule.grace, now):
            subject = event_subject(rule, event, source)
            if customer_id is None or not isinstance(subject, Related):
                yield subject
                continue
            if belongs_to(subject.record, customer_id):
                yield subject
        return
    records: Iterator[Record]
    if customer_id is not None and entity == "customer":
        one = source.get(entity, customer_id)
        records = iter([one] if one else [])
    elif customer_id is not None:
        records = (r for r in source.iter_records(entity) if belongs_to(r, customer_id))
    else:
        records = source.iter_records(entity)
    for record in records:
        yield Related(rule, record, source)


def event_subject(rule: Rule, event: Event, source: Source) -> Related | Skip:
    """The record ``event`` is about, as the subject of the event rule ``rule``."""
    entity = rule.trigger.spec.entity
    record = source.get(entity, event.record_id)
    if record is None:
        reason = f"event {event.id}: {entity} {event.record_id} is not in the CRM data"
        return Skip(rule.id, entity, event.record_id, reason)
    return Related(rule, record, source, event)


def event_rules(catalog: RuleCatalog, event_type: str) -> list[Rule]:
    """The enabled rules that react to events of ``event_type``."""
    return [
        rule
        for rule in catalog
        if rule.enabled
        and isinstance(rule.trigger.spec, EventTrigger)
        and rule.trigger.spec.type == event_type
    ]


def plan_event(
    catalog: RuleCatalog,
    source: Source,
    event: Event,
    now: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
) -> Iterator[PlannedDelivery | Skip]:
    """What the event rules of ``event.type`` send at ``now`` for this one event: the same
    as :func:`plan` finds for it, without looking at any other event of its type."""
    for rule in event_rules(catalog, event.type):
        subject = event_subject(rule, event, source)
        if isinstance(subject, Skip):
            yield subject
            continue
        yield from plan_subject(rule, subject, now, default_zone=default_zone, company=company)


def occurrences(
    rule: Rule, subject: Related, window: TriggerWindow, default_zone: ZoneInfo
) -> list[Occurrence]:
    """Occurrences of ``rule`` for ``subject`` in ``window``; raises :class:`NotApplicable`."""
    if subject.event is not None:
        occurrence = event_occurrence(rule, subject.event, default_zone, customer=subject.customer)
        return [occurrence] if window.contains(occurrence.due_at) else []
    customer = None if subject.record.entity == "customer" else subject.customer
    return evaluate(
        rule, subject.record, window, default_zone, _month_days(window), customer=customer
    )


@lru_cache(maxsize=32)
def _month_days(window: TriggerWindow) -> frozenset[tuple[int, int]] | None:
    return window.month_days()


def plan_subject(
    rule: Rule,
    subject: Related,
    now: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    window: TriggerWindow | None = None,
) -> Iterator[PlannedDelivery | Skip]:
    """The deliveries (or skips) of ``rule`` for one subject record at ``now`` (``window``:
    the rule's window at ``now``, when the caller has it already)."""
    record = subject.record
    window = window or TriggerWindow(now - rule.grace, now)
    try:
        found = occurrences(rule, subject, window, default_zone)
    except NotApplicable as exc:
        yield Skip(rule.id, record.entity, record.id, exc.reason)
        return
    for occurrence in found:
        for action in rule.send:
            yield prepare_delivery(rule, action, occurrence, subject.records(), company)
