"""Pure date and time-zone arithmetic: yearly dates, Feb 29, local hours across DST.

Every function here is pure (no clock, no I/O) and returns aware datetimes in UTC.
"""

from __future__ import annotations

import calendar
import logging
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

Feb29Policy = Literal["feb28", "mar1"]


def yearly_date(month: int, day: int, year: int, feb29: Feb29Policy = "feb28") -> date:
    """The date of a yearly event (birthday, anniversary) in ``year``.

    Feb 29 moves to Feb 28 or Mar 1 in common years (1900 and 2100 are common years);
    any other impossible day (Jan 31 → a 30-day month does not arise for yearly events)
    is clamped to the month's last day.

    >>> yearly_date(2, 29, 2025), yearly_date(2, 29, 2025, "mar1"), yearly_date(2, 29, 2028)
    (datetime.date(2025, 2, 28), datetime.date(2025, 3, 1), datetime.date(2028, 2, 29))
    """
    if month == 2 and day == 29 and not calendar.isleap(year):
        return date(year, 3, 1) if feb29 == "mar1" else date(year, 2, 28)
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``zone``; exactly one per day.

    A wall time that does not exist (spring-forward gap, e.g. 02:30) is taken with the offset
    before the change, i.e. moved forward by the gap; a wall time that happens twice (autumn)
    is the first of the two (``fold=0``, PEP 495).
    """
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def later_on_calendar(
    start: date | datetime, delay: timedelta, zone: ZoneInfo, at: time | None = None
) -> datetime:
    """The instant ``delay`` after ``start``, counted on the calendar of ``zone``.

    Whole days are calendar days: the same wall-clock time that many days later, whatever a
    DST change in between did to the length of a day; what is left of ``delay`` (hours,
    minutes) is elapsed time on top. A calendar date (a ``date``) starts at local midnight.
    With ``at``, the result is that local time on the day the delay ends.

    >>> la = ZoneInfo("America/Los_Angeles")
    >>> later_on_calendar(date(2026, 2, 28), timedelta(days=7), la, time(10))
    datetime.datetime(2026, 3, 7, 18, 0, tzinfo=datetime.timezone.utc)
    >>> later_on_calendar(datetime(2026, 3, 7, 18, tzinfo=UTC), timedelta(days=2), la)
    datetime.datetime(2026, 3, 9, 17, 0, tzinfo=datetime.timezone.utc)
    """
    if isinstance(start, datetime):
        local = (start if start.tzinfo else start.replace(tzinfo=UTC)).astimezone(zone)
        day, wall = local.date(), local.time()  # time() keeps the fold of a repeated hour
    else:
        day, wall = start, time(0)
    whole = timedelta(days=delay.days)
    due = local_instant(day + whole, wall, zone) + (delay - whole)
    if at is not None:
        due = local_instant(due.astimezone(zone).date(), at, zone)
    return due


def describe_local(instant: datetime, zone: ZoneInfo) -> str:
    """``instant`` as the people it is for read it: the local date and time, the zone named,
    and UTC beside it (``2027-02-28 10:00 America/Los_Angeles (18:00 UTC)``).

    >>> describe_local(datetime(2027, 2, 28, 18, tzinfo=UTC), ZoneInfo("America/Los_Angeles"))
    '2027-02-28 10:00 America/Los_Angeles (18:00 UTC)'
    """
    local = instant.astimezone(zone)
    utc = instant.astimezone(UTC)
    shown = f"{local:%Y-%m-%d %H:%M} {zone.key}"
    if zone.key in ("UTC", "Etc/UTC"):
        return shown
    other = f"{utc:%H:%M}" if utc.date() == local.date() else f"{utc:%Y-%m-%d %H:%M}"
    return f"{shown} ({other} UTC)"


def in_send_window(instant: datetime, start: time, end: time, zone: ZoneInfo) -> datetime:
    """``instant`` if its local time in ``zone`` is within ``[start, end)``, else the next
    local ``start`` (quiet hours). ``start`` after ``end`` is a window across midnight.

    >>> berlin = ZoneInfo("Europe/Berlin")
    >>> in_send_window(datetime(2026, 3, 14, 21, tzinfo=UTC), time(8), time(20), berlin)
    datetime.datetime(2026, 3, 15, 7, 0, tzinfo=datetime.timezone.utc)
    """
    local = instant.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    if start < end:
        if start <= wall < end:
            return instant
        day = local.date() + timedelta(days=1) if wall >= end else local.date()
    else:
        if wall >= start or wall < end:
            return instant
        day = local.date()  # between end and start: the window opens later today
    return local_instant(day, start, zone)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def zone_or_default(name: str | None, default: ZoneInfo) -> ZoneInfo:
    """``ZoneInfo(name)`` when ``name`` is a known IANA zone, else ``default``."""
    if not name:
        return default
    zone = _zone(name.strip())
    return zone if zone is not None else default


def is_known_zone(name: str) -> bool:
    """True when ``name`` is an IANA time zone this machine knows."""
    return _zone(name.strip()) is not None


def parse_instant(text: str) -> datetime:
    """ISO 8601 date or datetime → aware UTC datetime; naive values are UTC.

    >>> parse_instant("2026-03-14T10:00:00Z")
    datetime.datetime(2026, 3, 14, 10, 0, tzinfo=datetime.timezone.utc)
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_now() -> datetime:
    """The current instant, aware, in UTC (the one place the wall clock is read)."""
    return datetime.now(UTC)
