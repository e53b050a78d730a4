"""From rules and CRM records to the deliveries that are due: the heart of a scheduler pass.

Pure apart from reading the source: nothing is claimed, queued or sent here, which is what makes
``crm-worker plan`` an honest dry run. The same :func:`prepare_delivery` runs again at send time
(:mod:`worker.delivery`), so plan and send apply one set of checks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from worker.addresses import normalize_recipient
from worker.conditions import ConditionError, compile_condition
from worker.context import message_context
from worker.errors import AddressError
from worker.rules.catalog import RuleCatalog
from worker.rules.models import Rule, SendAction
from worker.sources.base import Record, Source
from worker.triggers import NotApplicable, Occurrence, TriggerWindow, evaluate

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
class PlannedDelivery:
    """A message that is due: who gets which template, through which channel, and when."""

    key: str
    occurrence: Occurrence
    action: SendAction
    to: str
    recipient_name: str
    locale: str | None
    context: Mapping[str, object]

    @property
    def rule_id(self) -> str:
        return self.occurrence.rule_id

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


def subject_records(rule: Rule, record: Record, source: Source) -> dict[str, Record]:
    """The records a message of ``rule`` about ``record`` is built from, by entity name."""
    records = {record.entity: record}
    customer_id = record["customer_id"]
    if record.entity != "customer" and isinstance(customer_id, str) and customer_id:
        customer = source.get("customer", customer_id)
        if customer is not None:
            records["customer"] = customer
    return records


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
    locale = None
    if isinstance(customer, Mapping) and entity == "customer":
        name_parts = [str(customer.get(f) or "") for f in ("first_name", "last_name")]
    if isinstance(customer, Mapping):
        locale = str(customer.get("locale") or "") or None
    return PlannedDelivery(
        key=key,
        occurrence=occurrence,
        action=action,
        to=address,
        recipient_name=" ".join(p for p in name_parts if p),
        locale=locale,
        context=context,
    )


def plan(
    catalog: RuleCatalog,
    source: Source,
    now: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    rule_ids: frozenset[str] | None = None,
    record_id: str | None = None,
) -> Iterator[PlannedDelivery | Skip]:
    """Every delivery due at ``now`` (and every skip, with its reason), rule by rule.

    A rule's window is ``(now - grace, now]``: what fell due within its catch-up grace. Whether
    it was already sent is the ledger's business, not the plan's.
    ``rule_ids`` and ``record_id`` narrow the pass (``plan --rule``, ``plan --customer``).
    """
    for rule in catalog:
        if not rule.enabled or (rule_ids is not None and rule.id not in rule_ids):
            continue
        window = TriggerWindow(now - rule.grace, now)
        month_days = window.month_days()
        entity = rule.trigger.spec.entity
        records: Iterator[Record]
        if record_id is not None:
            one = source.get(entity, record_id)
            records = iter([one] if one else [])
        else:
            records = source.iter_records(entity)
        for record in records:
            try:
                occurrences = evaluate(rule, record, window, default_zone, month_days)
            except NotApplicable as exc:
                yield Skip(rule.id, entity, record.id, exc.reason)
                continue
            for occurrence in occurrences:
                related = subject_records(rule, record, source)
                for action in rule.send:
                    yield prepare_delivery(rule, action, occurrence, related, company)
