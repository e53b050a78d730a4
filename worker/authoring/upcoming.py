"""What goes out when: per day and rule, the messages the rules will send and those they will
skip, over the days ahead (the console's ``/upcoming`` and the "next 30 days" of ``/rules``).

The same steps as a scheduler pass (:func:`~worker.planning.plan.occurrences` for each record
a rule is about, then :func:`~worker.planning.plan.prepare_delivery`: condition, recipient),
over a window of days instead of a rule's grace, plus the ledger and the suppression list
(already sent, address suppressed). Days are the customer's own calendar days. ``event``
rules send when the CRM reports an event, which cannot be foreseen: they are left out.

Example::

    found = upcoming(runtime.catalog, runtime.source, now, now + timedelta(days=7),
                     default_zone=runtime.default_zone, company=runtime.settings.company,
                     ledger=runtime.ledger, suppression=runtime.suppression)  # doctest: +SKIP
    for (day, rule_id), count in sorted(found.days.items()):
        print(day, rule_id, count.sends, count.skips)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from worker.constants import DELIVERY_BATCH_SIZE
from worker.planning.plan import (
    PlannedDelivery,
    Skip,
    occurrences,
    prepare_delivery,
    subjects,
)
from worker.planning.triggers import NotApplicable, TriggerWindow
from worker.records.delivery_state import delivery_states
from worker.records.ledger import Ledger
from worker.records.suppression import SuppressionList
from worker.rules.catalog import RuleCatalog
from worker.rules.models import EventTrigger
from worker.sources.base import Source


@dataclass
class DayCount:
    """One rule's messages on one day: how many go out, how many are skipped and why."""

    sends: int = 0
    skips: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skips += 1
        # "condition is false: customer.email_opt_in" for every customer is one reason.
        self.reasons[reason.split(" (", 1)[0]] += 1


@dataclass
class Upcoming:
    """The days from ``start`` to ``end``: counts by (customer's day, rule)."""

    start: datetime
    end: datetime
    days: dict[tuple[date, str], DayCount] = field(default_factory=dict)
    #: Records a rule cannot be evaluated for (a garbage date …), per rule.
    unusable: Counter[str] = field(default_factory=Counter)
    #: Event rules: they send when the CRM reports an event.
    event_rules: list[str] = field(default_factory=list)

    def sends_by_rule(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (_, rule_id), count in self.days.items():
            totals[rule_id] += count.sends
        return totals

    def count(self, day: date, rule_id: str) -> DayCount:
        return self.days.setdefault((day, rule_id), DayCount())


def upcoming(
    catalog: RuleCatalog,
    source: Source,
    start: datetime,
    end: datetime,
    *,
    default_zone: ZoneInfo,
    company: Mapping[str, str],
    ledger: Ledger,
    suppression: SuppressionList,
) -> Upcoming:
    """What the enabled rules send (and skip) with a due time in ``(start, end]``."""
    found = Upcoming(start, end)
    window = TriggerWindow(start, end)
    pending: list[tuple[PlannedDelivery, date]] = []
    for rule in catalog:
        if not rule.enabled:
            continue
        if isinstance(rule.trigger.spec, EventTrigger):
            found.event_rules.append(rule.id)
            continue
        for subject in subjects(rule, source, start):
            if isinstance(subject, Skip):
                found.unusable[rule.id] += 1
                continue
            try:
                due = occurrences(rule, subject, window, default_zone)
            except NotApplicable:
                found.unusable[rule.id] += 1
                continue
            for occurrence in due:
                day = occurrence.due_at.astimezone(occurrence.zone or default_zone).date()
                for action in rule.send:
                    item = prepare_delivery(rule, action, occurrence, subject.records(), company)
                    if isinstance(item, PlannedDelivery):
                        pending.append((item, day))
                    else:
                        found.count(day, rule.id).skip(item.reason)
            if len(pending) >= DELIVERY_BATCH_SIZE:
                _settle(found, pending, ledger, suppression)
                pending = []
    _settle(found, pending, ledger, suppression)
    return found


def _settle(
    found: Upcoming,
    pending: list[tuple[PlannedDelivery, date]],
    ledger: Ledger,
    suppression: SuppressionList,
) -> None:
    """Count ``pending`` as sends, or as skips when the ledger is done with them or their
    address is suppressed (one round trip for all of them)."""
    if not pending:
        return
    states = delivery_states(ledger, suppression, [(item.key, item.to) for item, _ in pending])
    for (item, day), state in zip(pending, states, strict=True):
        count = found.count(day, item.rule_id)
        if state.suppressed is not None:
            count.skip("address suppressed")
        elif state.final:
            count.skip(f"already {state.state}")
        else:
            count.sends += 1
