"""``crm-worker plan --customer ID --explain``: per rule, why a customer gets a message or not.

Read-only from end to end: the plan itself (pure), plus lookups of the ledger (already sent?)
and of the contact cap (would the cap stop it?). Nothing is claimed, counted or sent.

Verdicts, in the order they are decided:

* ``disabled`` – the rule has ``enabled: false``;
* ``no data`` – the record cannot have occurrences (garbage date, unknown event record …);
* ``not due`` – not the date (with the next due time when there is one within a year);
* ``skipped`` – due, but the condition is false (opted out), the address is unusable or
  suppressed …;
* ``already`` – due, and the ledger already has it (sent, skipped, failed, queued …);
* ``capped`` – due, but the customer reached the contact cap;
* ``due`` – a pass now would queue it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from worker.errors import TemplateError
from worker.localtime import describe_local
from worker.messages.rendering import TemplateRenderer, locale_chain
from worker.planning.contact_policy import ContactPolicy, counted
from worker.planning.events import EventLog
from worker.planning.plan import (
    PlannedDelivery,
    Related,
    Skip,
    occurrences,
    prepare_delivery,
    subjects,
)
from worker.planning.triggers import NotApplicable, Occurrence, TriggerWindow
from worker.records.ledger import Ledger
from worker.records.suppression import SuppressionList
from worker.rules.catalog import RuleCatalog
from worker.rules.models import EventTrigger, Rule, format_duration
from worker.sources.base import Source

Verdict = Literal["disabled", "no data", "not due", "skipped", "already", "capped", "due"]

#: How far ahead ``not due`` looks for the next occurrence (yearly rules: a full year).
LOOKAHEAD = timedelta(days=400)


@dataclass(frozen=True)
class Explanation:
    """One line of the explanation: a rule, the record it is about, the verdict and why."""

    rule_id: str
    subject: str
    verdict: Verdict
    reason: str
    key: str = ""
    to: str = ""


@dataclass(frozen=True)
class Explainer:
    """What the explanation reads: rules, CRM data, events, ledger and contact cap."""

    catalog: RuleCatalog
    source: Source
    ledger: Ledger
    contact_policy: ContactPolicy
    events: EventLog
    default_zone: ZoneInfo
    company: Mapping[str, str]
    suppression: SuppressionList | None = None
    #: Finds the language a message is written in (says when a reader gets a fallback one).
    renderer: TemplateRenderer | None = None

    def data_notes(self, customer_id: str) -> list[str]:
        """What is wrong with the customer's own CRM data (a garbage birthday, an unknown time
        zone …), each with what the worker does about it."""
        customer = self.source.get("customer", customer_id)
        if customer is None:
            return [f"customer {customer_id} is not in the CRM data"]
        return [customer.problems[name] for name in sorted(customer.problems)]

    def explain(
        self, customer_id: str, now: datetime, *, rule_ids: frozenset[str] | None = None
    ) -> Iterator[Explanation]:
        """Every rule's verdict (or only ``rule_ids``') for the customer at ``now``."""
        for rule in self.catalog:
            if rule_ids is not None and rule.id not in rule_ids:
                continue
            if not rule.enabled:
                yield Explanation(rule.id, f"customer {customer_id}", "disabled", "enabled: false")
                continue
            found = False
            for subject in subjects(
                rule, self.source, now, customer_id=customer_id, events=self.events
            ):
                found = True
                if isinstance(subject, Skip):
                    where = f"{subject.entity} {subject.record_id}"
                    yield Explanation(rule.id, where, "no data", subject.reason)
                else:
                    yield from self._subject(rule, subject, customer_id, now)
            if not found:
                yield Explanation(rule.id, f"customer {customer_id}", "not due", _nothing(rule))

    def _subject(
        self, rule: Rule, subject: Related, customer_id: str, now: datetime
    ) -> Iterator[Explanation]:
        where = f"{subject.record.entity} {subject.record.id}"
        window = TriggerWindow(now - rule.grace, now)
        try:
            due = occurrences(rule, subject, window, self.default_zone)
        except NotApplicable as exc:
            yield Explanation(rule.id, where, "no data", exc.reason)
            return
        if not due:
            yield Explanation(rule.id, where, "not due", self._not_due(rule, subject, now))
            return
        for occurrence in due:
            for action in rule.send:
                item = prepare_delivery(rule, action, occurrence, subject.records(), self.company)
                if isinstance(item, Skip):
                    reason = item.reason
                    customer = subject.customer() or subject.record
                    if (
                        reason.startswith("condition is false")
                        and customer["email_opt_in"] is False
                    ):
                        reason = f"opted out (email_opt_in is false); {reason}"
                    yield Explanation(rule.id, where, "skipped", reason, item.key)
                    continue
                entry = self.ledger.get(item.key)
                if entry.get("state"):
                    reason = f"ledger state {entry['state']}"
                    if entry.get("reason"):
                        reason += f": {entry['reason']}"
                    yield Explanation(rule.id, where, "already", reason, item.key, item.to)
                    continue
                suppressed = self.suppression.reason(item.to) if self.suppression else None
                if suppressed is not None:  # the worker skips it at send time
                    reason = f"address suppressed: {suppressed}"
                    yield Explanation(rule.id, where, "skipped", reason, item.key, item.to)
                    continue
                cap = self.contact_policy.cap
                if (
                    cap is not None
                    and counted(rule, action)
                    and self.contact_policy.count(customer_id, now) >= cap.limit
                ):
                    yield Explanation(
                        rule.id, where, "capped", self.contact_policy.reason(), item.key, item.to
                    )
                    continue
                reason = f"due {self._local(occurrence)}{self._language_note(item)}"
                yield Explanation(rule.id, where, "due", reason, item.key, item.to)

    def _language_note(self, item: PlannedDelivery) -> str:
        """``; in en: no fr template`` when the reader's language has no template folder."""
        if self.renderer is None or not item.action.to_customer or not item.locale:
            return ""
        wanted = locale_chain(item.locale, self.renderer.default_locale)[0].partition("-")[0]
        try:
            chosen = self.renderer.resolve_locale(item.action.template, item.locale)
        except TemplateError:
            return ""
        if chosen.lower().partition("-")[0] == wanted:
            return ""
        return f"; written in {chosen}: template {item.action.template!r} has no {wanted}/ folder"

    def _local(self, occurrence: Occurrence) -> str:
        """The occurrence's calendar date and send time on the customer's clock, and UTC."""
        return describe_local(occurrence.due_at, occurrence.zone or self.default_zone)

    def _not_due(self, rule: Rule, subject: Related, now: datetime) -> str:
        if subject.event is not None:
            return f"event {subject.event.id} is older than {format_duration(rule.grace)}"
        try:
            ahead = occurrences(
                rule, subject, TriggerWindow(now, now + LOOKAHEAD), self.default_zone
            )
        except NotApplicable as exc:
            return exc.reason
        if ahead:
            return f"not the date: next due {self._local(ahead[0])}"
        grace = format_duration(rule.grace)
        try:
            past = occurrences(
                rule, subject, TriggerWindow(now - LOOKAHEAD, now - rule.grace), self.default_zone
            )
        except NotApplicable as exc:
            return exc.reason
        if past:
            return f"not the date: was due {self._local(past[-1])}, longer ago than {grace}"
        field = getattr(rule.trigger.spec, "field", "")
        if field and subject.record[field.partition(".")[2]] in (None, ""):
            return f"no {field} yet"
        return f"not the date: nothing due within {grace} before now, nor in the next year"


def _nothing(rule: Rule) -> str:
    spec = rule.trigger.spec
    if isinstance(spec, EventTrigger):
        return f"no {spec.type} event for this customer within {format_duration(rule.grace)}"
    return f"the customer has no {spec.entity} records"
