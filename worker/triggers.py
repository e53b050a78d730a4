"""Pure trigger logic: which occurrences of a rule a record has in a time window.

No clock and no I/O here: callers pass the window and the records, and get
:class:`Occurrence` values whose keys are stable, so evaluating a rule any number of times
yields the same keys (the unit of idempotency in the ledger).

Example::

    >>> from datetime import UTC, date, datetime, timedelta
    >>> from pathlib import Path
    >>> from zoneinfo import ZoneInfo
    >>> from worker.rules import load_rule_text
    >>> from worker.sources.base import Record
    >>> rule = load_rule_text(
    ...     "id: bday\\ntrigger: {birthday: {at: '09:00'}}\\n"
    ...     "send: [{channel: email, template: birthday, to: customer.email}]", Path("bday.yaml"))
    >>> day = datetime(2026, 3, 14, 10, tzinfo=UTC)
    >>> window = TriggerWindow(day - timedelta(days=1), day)
    >>> record = Record("customer", "42", {"birthday": date(1990, 3, 14), "timezone": "Asia/Tokyo"})
    >>> [o.key for o in evaluate(rule, record, window, ZoneInfo("UTC"))]
    ['bday:customer:42:2026']
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from worker.localtime import local_instant, yearly_date, zone_or_default
from worker.rules.models import BirthdayTrigger, Rule
from worker.sources.base import Record

# Local dates differ from UTC dates by at most 14 hours (Pacific/Kiritimati, UTC+14 / UTC-12):
# a day of slack on each side keeps every zone's candidate dates in the fast filter.
_ZONE_SLACK = timedelta(days=2)
#: Windows longer than this skip the (month, day) pre-filter (it would match every day anyway).
_MAX_FILTERED_WINDOW = timedelta(days=360)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One time a rule fires for one record: e.g. ``birthday-greeting:customer:42:2026``."""

    rule_id: str
    entity: str
    record_id: str
    tag: str
    due_at: datetime

    @property
    def key(self) -> str:
        return f"{self.rule_id}:{self.entity}:{self.record_id}:{self.tag}"


class NotApplicable(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The record cannot have occurrences of this rule (missing or unusable data); has a reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class TriggerWindow:
    """The instants a pass covers: ``start < due_at <= end`` (both aware, UTC)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be aware datetimes")
        if self.start > self.end:
            raise ValueError("window start is after its end")

    def contains(self, instant: datetime) -> bool:
        return self.start < instant <= self.end

    def month_days(self) -> frozenset[tuple[int, int]] | None:
        """(month, day) pairs any zone's local date can have in the window; None = all."""
        if self.end - self.start > _MAX_FILTERED_WINDOW:
            return None
        first = (self.start - _ZONE_SLACK).date()
        days = (self.end + _ZONE_SLACK).date().toordinal() - first.toordinal() + 1
        pairs = {(d.month, d.day) for d in (first + timedelta(n) for n in range(days))}
        if (2, 28) in pairs or (3, 1) in pairs:
            pairs.add((2, 29))  # moved to Feb 28 / Mar 1 in common years
        return frozenset(pairs)


def field_name(path: str) -> str:
    """``customer.birthday`` → ``birthday``."""
    return path.partition(".")[2]


def _record_date(record: Record, name: str) -> date:
    value = record[name]
    if value is None:
        raise NotApplicable(record.problems.get(name) or f"no {name}")
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise NotApplicable(f"{name} {value!r} is not a date")


def _birthday_occurrence(
    rule: Rule, spec: BirthdayTrigger, record: Record, born: date, year: int, zone: ZoneInfo
) -> Occurrence | None:
    if year <= born.year:
        return None  # no greeting on (or before) the day of birth
    day = yearly_date(born.month, born.day, year, spec.feb29)
    due = local_instant(day, spec.at, zone)
    return Occurrence(rule.id, "customer", record.id, str(year), due)


def record_zone(record: Record, default: ZoneInfo) -> ZoneInfo:
    """The customer's time zone, or ``default`` when missing or unknown."""
    zone = record["timezone"]
    return zone_or_default(zone if isinstance(zone, str) else None, default)


def evaluate(
    rule: Rule,
    record: Record,
    window: TriggerWindow,
    default_zone: ZoneInfo,
    month_days: frozenset[tuple[int, int]] | None = None,
) -> list[Occurrence]:
    """Occurrences of ``rule`` for ``record`` due within ``window``.

    ``month_days`` (from :meth:`TriggerWindow.month_days`, computed once per pass) lets yearly
    triggers skip most records without any time-zone arithmetic.
    Raises :class:`NotApplicable` with a reason when the record's data makes the rule unusable.
    """
    spec = rule.trigger.spec
    born = _record_date(record, field_name(spec.field))
    if month_days is not None and (born.month, born.day) not in month_days:
        return []
    zone = record_zone(record, default_zone)
    first_year = window.start.astimezone(zone).year - 1
    last_year = window.end.astimezone(zone).year
    if born.year >= last_year:
        raise NotApplicable(f"{field_name(spec.field)} {born.isoformat()} is in the future")
    found = []
    for year in range(first_year, last_year + 1):
        occurrence = _birthday_occurrence(rule, spec, record, born, year, zone)
        if occurrence is not None and window.contains(occurrence.due_at):
            found.append(occurrence)
    return found


def occurrence_for_tag(
    rule: Rule, record: Record, tag: str, default_zone: ZoneInfo
) -> Occurrence | None:
    """The occurrence of ``rule`` for ``record`` with ``tag``, recomputed from current data.

    Used at send time: ``None`` (or a different ``due_at``) means the data changed since the
    occurrence was planned. Raises :class:`NotApplicable` like :func:`evaluate`.
    """
    spec = rule.trigger.spec
    born = _record_date(record, field_name(spec.field))
    if not tag.isdigit():
        return None
    return _birthday_occurrence(
        rule, spec, record, born, int(tag), record_zone(record, default_zone)
    )
