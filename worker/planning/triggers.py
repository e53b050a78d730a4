"""Pure trigger logic: which occurrences of a rule a record has in a time window.

No clock and no I/O here: callers pass the window and the records (and, for records that are
not customers, a way to get the related customer, whose time zone sets the local hour), and get
:class:`Occurrence` values whose keys are stable, so evaluating a rule any number of times
yields the same keys (the unit of idempotency in the ledger).

Occurrence tags, per trigger kind:

==============  ==========================================  ==================================
kind            due at                                      tag
==============  ==========================================  ==================================
birthday        month/day of the date each year, ``at``     the year (``2026``)
anniversary     month/day of the record's date, ``at``      the anniversary number (``1``)
after           date + ``delay`` (on that day at ``at``)    ``once``
unresolved      opened + ``after`` + (n-1) × ``every``      the follow-up number (``1``..``times``)
event           when the CRM event happened                 the event id
==============  ==========================================  ==================================

Every date is read on the customer's own calendar (README, "Dates and time zones"): a calendar
date (a ``date``, e.g. ``2026-02-28``) is that day in the customer's zone, an instant (an aware
``datetime``) falls on the customer's local date, and whole days of a delay are calendar days
there (:func:`~worker.localtime.later_on_calendar`). A rule's ``send_window`` then moves a due
time outside the window to the next opening.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from worker.localtime import (
    in_send_window,
    later_on_calendar,
    local_instant,
    parse_instant,
    yearly_date,
    zone_or_default,
)
from worker.planning.events import Event
from worker.rules.models import (
    AfterTrigger,
    AnniversaryTrigger,
    BirthdayTrigger,
    Rule,
    UnresolvedTrigger,
)
from worker.sources.base import Record

#: Gives the customer a record belongs to (for its time zone); called only when needed.
CustomerLookup = Callable[[], Record | None]
ONCE_TAG = "once"

# Local dates differ from UTC dates by at most 14 hours (Pacific/Kiritimati, UTC+14 / UTC-12):
# a day of slack on each side keeps every zone's candidate dates in the fast filter.
_ZONE_SLACK = timedelta(days=2)
_ONE_DAY = timedelta(days=1)
_AROUND_FEB_29 = frozenset({(2, 28), (2, 29), (3, 1)})
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
    #: The customer's zone the due time was found in (their local date and hour); the zone a
    #: message to the customer is written in. Not part of the occurrence's identity.
    zone: ZoneInfo | None = field(default=None, compare=False)

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
        """(month, day) pairs any zone's local date can have in the window, and the days
        next to them (a datetime's UTC date may be a day off its local date); None = all."""
        if self.end - self.start > _MAX_FILTERED_WINDOW:
            return None
        first = (self.start - _ZONE_SLACK).date() - _ONE_DAY
        days = (self.end + _ZONE_SLACK).date().toordinal() - first.toordinal() + 2
        pairs = {(d.month, d.day) for d in (first + timedelta(n) for n in range(days))}
        if pairs & _AROUND_FEB_29:
            pairs |= _AROUND_FEB_29  # Feb 29 moves to Feb 28 / Mar 1 in common years
        return frozenset(pairs)


def field_name(path: str) -> str:
    """``customer.birthday`` → ``birthday``."""
    return path.partition(".")[2]


def _record_value(record: Record, name: str) -> date | datetime:
    value = record[name]
    if value is None or value == "":
        raise NotApplicable(record.problems.get(name) or f"no {name}")
    if isinstance(value, (date, datetime)):
        return value
    if isinstance(value, str):
        # A column the source does not type (an extra CSV column) may still hold ISO dates.
        try:
            return date.fromisoformat(value) if len(value) == 10 else parse_instant(value)
        except ValueError:
            pass
    raise NotApplicable(f"{name} {value!r} is not a date")


def _record_date(record: Record, name: str) -> date:
    value = _record_value(record, name)
    return value.date() if isinstance(value, datetime) else value


def record_zone(record: Record, default: ZoneInfo) -> ZoneInfo:
    """The customer's time zone, or ``default`` when missing or unknown."""
    zone = record["timezone"]
    return zone_or_default(zone if isinstance(zone, str) else None, default)


class _Zone:
    """The time zone of the customer a record belongs to, looked up once and only if needed."""

    def __init__(self, record: Record, default: ZoneInfo, customer: CustomerLookup | None):
        self.record = record
        self.default = default
        self.customer = customer
        self.zone: ZoneInfo | None = None

    def __call__(self) -> ZoneInfo:
        if self.zone is None:
            owner = self.record if self.customer is None else self.customer()
            self.zone = record_zone(owner, self.default) if owner is not None else self.default
        return self.zone


def _windowed(rule: Rule, due: datetime, zone: Callable[[], ZoneInfo]) -> datetime:
    window = rule.send_window
    return in_send_window(due, window.start, window.end, zone()) if window else due


def _near(instant: datetime, window: TriggerWindow, slack: timedelta) -> bool:
    return window.start - slack <= instant <= window.end + slack


def _slack(rule: Rule) -> timedelta:
    # A local hour moves a due time by at most a day; a send window by at most a day more.
    return _ZONE_SLACK + (timedelta(days=1) if rule.send_window else timedelta(0))


# -- birthday and anniversary: yearly --------------------------------------------------------


def _yearly_occurrence(
    rule: Rule,
    spec: BirthdayTrigger | AnniversaryTrigger,
    record: Record,
    origin: date,
    year: int,
    zone: Callable[[], ZoneInfo],
) -> Occurrence | None:
    number = year - origin.year
    if number < 1:
        return None  # no greeting on (or before) the day itself
    if isinstance(spec, AnniversaryTrigger):
        if spec.years is not None and number not in spec.years:
            return None
        tag = str(number)
    else:
        tag = str(year)
    day = yearly_date(origin.month, origin.day, year, spec.feb29)
    due = _windowed(rule, local_instant(day, spec.at, zone()), zone)
    return Occurrence(rule.id, record.entity, record.id, tag, due, zone())


def _local_origin(
    record: Record, spec: BirthdayTrigger | AnniversaryTrigger, zone: Callable[[], ZoneInfo]
) -> date:
    """The date a yearly trigger repeats: a datetime (a purchase) counts on the customer's
    local calendar, a date (a birthday) as written."""
    value = _record_value(record, field_name(spec.field))
    return value.astimezone(zone()).date() if isinstance(value, datetime) else value


def _yearly(
    rule: Rule,
    spec: BirthdayTrigger | AnniversaryTrigger,
    record: Record,
    window: TriggerWindow,
    zone: _Zone,
    month_days: frozenset[tuple[int, int]] | None,
) -> list[Occurrence]:
    raw = _record_date(record, field_name(spec.field))
    if month_days is not None and (raw.month, raw.day) not in month_days:
        return []
    origin = _local_origin(record, spec, zone)
    first_year = window.start.astimezone(zone()).year - 1
    last_year = window.end.astimezone(zone()).year
    if isinstance(spec, BirthdayTrigger) and origin.year >= last_year:
        raise NotApplicable(f"{field_name(spec.field)} {origin.isoformat()} is in the future")
    found = []
    for year in range(first_year, last_year + 1):
        occurrence = _yearly_occurrence(rule, spec, record, origin, year, zone)
        if occurrence is not None and window.contains(occurrence.due_at):
            found.append(occurrence)
    return found


# -- after: once -----------------------------------------------------------------------------


def _after_due(rule: Rule, spec: AfterTrigger, record: Record, zone: _Zone) -> datetime:
    start = _record_value(record, field_name(spec.field))
    return _windowed(rule, later_on_calendar(start, spec.delay, zone(), spec.at), zone)


def _after_far(rule: Rule, spec: AfterTrigger, value: date, window: TriggerWindow) -> bool:
    """Is ``value`` + delay so far from ``window`` that no time zone or send window can bring
    the due time into it? (A bare date counts from midnight UTC, a day of slack covers that.)"""
    start = value if isinstance(value, datetime) else datetime.combine(value, time(0), UTC)
    return not _near(start + spec.delay, window, _slack(rule) + _ONE_DAY)


def _after(
    rule: Rule, spec: AfterTrigger, record: Record, window: TriggerWindow, zone: _Zone
) -> list[Occurrence]:
    name = field_name(spec.field)
    if record[name] in (None, "") and name not in record.problems:
        return []  # not delivered yet (say): nothing to wait for, and nothing wrong either
    if _after_far(rule, spec, _record_value(record, name), window):
        return []  # far from the window in any time zone: no need for the customer's zone
    due = _after_due(rule, spec, record, zone)
    if not window.contains(due):
        return []
    return [Occurrence(rule.id, record.entity, record.id, ONCE_TAG, due, zone())]


# -- unresolved: follow-ups while a case is open ---------------------------------------------


def _resolved_at(record: Record, spec: UnresolvedTrigger, zone: _Zone) -> datetime | None:
    name = field_name(spec.resolved)
    if record.problems.get(name):
        # Unknown whether the case is closed: do not chase a customer who may be satisfied.
        raise NotApplicable(record.problems[name])
    value = record[name]
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return local_instant(value, time(0), zone())  # resolved that day: from its start
    raise NotApplicable(f"{name} {value!r} is not a date")


def _follow_up(
    rule: Rule, spec: UnresolvedTrigger, record: Record, number: int, zone: _Zone
) -> Occurrence:
    opened = _record_value(record, field_name(spec.field))
    delay = spec.after + (number - 1) * (spec.every or timedelta(0))
    due = _windowed(rule, later_on_calendar(opened, delay, zone()), zone)
    return Occurrence(rule.id, record.entity, record.id, str(number), due, zone())


def _check_open(record: Record, spec: UnresolvedTrigger, now: datetime, zone: _Zone) -> None:
    resolved = _resolved_at(record, spec, zone)
    if resolved is not None and resolved <= now:
        raise NotApplicable(f"{record.entity} {record.id} was resolved at {resolved.isoformat()}")


def _unresolved(
    rule: Rule, spec: UnresolvedTrigger, record: Record, window: TriggerWindow, zone: _Zone
) -> list[Occurrence]:
    opened = _record_value(record, field_name(spec.field))  # missing: a reason to skip
    # Calendar days move a follow-up by at most a DST change from the elapsed delay, and a
    # calendar date's local midnight by at most 14 hours from UTC's: follow-ups far from the
    # window in any zone are dropped before the customer's zone is looked up (one lookup per
    # open complaint of a large CRM would be the cost of every pass).
    start = opened if isinstance(opened, datetime) else datetime.combine(opened, time(0), UTC)
    every = spec.every or timedelta(0)
    padding = _slack(rule) + _ONE_DAY
    found = [
        occurrence
        for number in range(1, spec.times + 1)
        if _near(start + spec.after + (number - 1) * every, window, padding)
        and window.contains((occurrence := _follow_up(rule, spec, record, number, zone)).due_at)
    ]
    if found:
        _check_open(record, spec, window.end, zone)
    return found


# -- the entry points ------------------------------------------------------------------------

#: A cheap test of one record against one rule in one window: False only when :func:`evaluate`
#: would find no occurrence and raise no :class:`NotApplicable` for it.
Screen = Callable[[Record], bool]
#: The same test on the trigger field alone: (typed value, whether the field was unusable).
ValueScreen = Callable[[object, bool], bool]


def screen_value(
    rule: Rule, window: TriggerWindow, month_days: frozenset[tuple[int, int]] | None
) -> tuple[str, ValueScreen] | None:
    """The trigger field of ``rule`` and its :data:`ValueScreen` (``month_days`` as for
    :func:`evaluate`), or None when its trigger kind has none. The test is the very one
    :func:`evaluate` starts with (yearly: the (month, day) set; ``after``: far from the window
    in any zone), so a pass can drop most rows of a large CRM before any time zone, customer
    lookup or occurrence is looked at (``unresolved``: no follow-up near the window: the
    complaint's customer need not be read for its zone). A field that is unusable or not a
    date passes:
    :func:`evaluate` then says why."""
    spec = rule.trigger.spec
    if isinstance(spec, (BirthdayTrigger, AnniversaryTrigger)):
        days = month_days
        if days is None:
            return None

        def yearly(value: object, unusable: bool) -> bool:
            if isinstance(value, datetime):
                value = value.date()
            elif not isinstance(value, date):
                return True  # missing or unusable: a reason to skip
            return (value.month, value.day) in days

        return field_name(spec.field), yearly
    if isinstance(spec, AfterTrigger):
        # _after_far's test, solved for the start once: start + delay within the padded window.
        padding = _slack(rule) + _ONE_DAY
        earliest, latest = window.start - padding - spec.delay, window.end + padding - spec.delay

        def once(value: object, unusable: bool) -> bool:
            if isinstance(value, datetime):
                return value.tzinfo is None or earliest <= value <= latest
            if isinstance(value, date):
                return earliest <= datetime.combine(value, time(0), UTC) <= latest
            if value is None or value == "":
                return unusable  # as _after: unusable is a skip, empty is nothing to wait for
            return True

        return field_name(spec.field), once
    if isinstance(spec, UnresolvedTrigger):
        # _unresolved's test: some follow-up (opened + after + (n-1) x every) near the window.
        padding = _slack(rule) + _ONE_DAY
        every = spec.every or timedelta(0)
        offsets = [spec.after + (n - 1) * every for n in range(1, spec.times + 1)]

        def follow_ups(value: object, unusable: bool) -> bool:
            if isinstance(value, datetime):
                if value.tzinfo is None:
                    return True
                start = value
            elif isinstance(value, date):
                start = datetime.combine(value, time(0), UTC)
            else:
                return True  # missing or not a date: evaluate says why
            return any(_near(start + offset, window, padding) for offset in offsets)

        return field_name(spec.field), follow_ups
    return None


def screen(
    rule: Rule, window: TriggerWindow, month_days: frozenset[tuple[int, int]] | None
) -> Screen | None:
    """:func:`screen_value` applied to a record's field."""
    found = screen_value(rule, window, month_days)
    if found is None:
        return None
    name, test = found

    def on_record(record: Record) -> bool:
        value = record[name]
        return test(value, (value is None or value == "") and name in record.problems)

    return on_record


def evaluate(
    rule: Rule,
    record: Record,
    window: TriggerWindow,
    default_zone: ZoneInfo,
    month_days: frozenset[tuple[int, int]] | None = None,
    *,
    customer: CustomerLookup | None = None,
) -> list[Occurrence]:
    """Occurrences of ``rule`` for ``record`` due within ``window``.

    ``month_days`` (from :meth:`TriggerWindow.month_days`, computed once per pass) lets yearly
    triggers skip most records without any time-zone arithmetic. ``customer`` gives the
    customer of a record that is not one (its time zone sets local hours); without it the
    record's own ``timezone`` (else ``default_zone``) applies.
    ``event`` rules have no occurrences here: see :func:`event_occurrence`.
    Raises :class:`NotApplicable` with a reason when the record's data makes the rule unusable.
    """
    spec = rule.trigger.spec
    zone = _Zone(record, default_zone, customer)
    if isinstance(spec, (BirthdayTrigger, AnniversaryTrigger)):
        return _yearly(rule, spec, record, window, zone, month_days)
    if isinstance(spec, AfterTrigger):
        return _after(rule, spec, record, window, zone)
    if isinstance(spec, UnresolvedTrigger):
        return _unresolved(rule, spec, record, window, zone)
    return []


def event_occurrence(
    rule: Rule,
    event: Event,
    default_zone: ZoneInfo,
    *,
    customer: CustomerLookup | None = None,
) -> Occurrence:
    """The occurrence of an ``event`` rule for one reported event: due when it happened
    (moved into the rule's send window, in the customer's time zone)."""
    zone = _Zone(event.as_record(), default_zone, customer)
    due = _windowed(rule, event.at, zone)
    return Occurrence(rule.id, event.entity, event.record_id, event.id, due, zone())


def example_tag(rule: Rule, now: datetime, fallback: str) -> str:
    """A tag of the kind ``rule``'s occurrences have, for a message shown as if it were due
    (``preview`` off its date, ``check``'s test render): templates may read the tag as a
    number (``occurrence.tag | plural(…)``). Event rules, whose tags are event ids, get
    ``fallback``."""
    spec = rule.trigger.spec
    if isinstance(spec, BirthdayTrigger):
        return str(now.year)
    if isinstance(spec, (AnniversaryTrigger, UnresolvedTrigger)):
        return "1"
    if isinstance(spec, AfterTrigger):
        return ONCE_TAG
    return fallback


def occurrence_for_tag(
    rule: Rule,
    record: Record,
    tag: str,
    default_zone: ZoneInfo,
    *,
    now: datetime | None = None,
    customer: CustomerLookup | None = None,
    event: Event | None = None,
) -> Occurrence | None:
    """The occurrence of ``rule`` for ``record`` with ``tag``, recomputed from current data.

    Used at send time: ``None`` (or a different ``due_at``) means the data changed since the
    occurrence was planned. With ``now``, a case that is resolved by then raises
    :class:`NotApplicable` (``unresolved`` rules). ``event`` rules need the ``event`` the tag
    names. Raises :class:`NotApplicable` like :func:`evaluate`.
    """
    spec = rule.trigger.spec
    zone = _Zone(record, default_zone, customer)
    if isinstance(spec, (BirthdayTrigger, AnniversaryTrigger)):
        if not tag.isdigit():
            return None
        origin = _local_origin(record, spec, zone)
        year = int(tag) if isinstance(spec, BirthdayTrigger) else origin.year + int(tag)
        return _yearly_occurrence(rule, spec, record, origin, year, zone)
    if isinstance(spec, AfterTrigger):
        if tag != ONCE_TAG:
            return None
        due = _after_due(rule, spec, record, zone)
        return Occurrence(rule.id, record.entity, record.id, tag, due, zone())
    if isinstance(spec, UnresolvedTrigger):
        if not tag.isdigit() or not 1 <= int(tag) <= spec.times:
            return None
        occurrence = _follow_up(rule, spec, record, int(tag), zone)
        _check_open(record, spec, now or occurrence.due_at, zone)
        return occurrence
    if event is None or event.id != tag or event.record_id != record.id:
        return None
    return event_occurrence(rule, event, default_zone, customer=customer)
