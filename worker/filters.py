"""Template filters that write money, numbers and dates the way the recipient reads them (Babel).

A message is written for its recipient: the locale is the recipient's own (``de-AT`` writes
``€ 1.234,50``, ``de`` writes ``1.234,50 €``) when Babel knows it, else the next step of the
fallback chain, and dates and times are shown in the recipient's time zone (the customer's, or
the send step's / internal default for staff); :func:`formatting_locale` sets both around one
render. Values arrive as plain data – CSV text or ISO 8601 dates – and a value that is not an
amount or a date fails the message with a reason instead of printing garbage.

A calendar date (``2026-05-27``) is the same date in every zone; an instant
(``2026-05-26T22:30:00+00:00``) is shown on the recipient's calendar (27 May in Madrid). A time
shown in a zone other than the recipient's names both zones.

In templates::

    {{ purchase.amount | money("EUR") }}        → 1.234,50 €
    {{ purchase.purchased_at | date }}           → 14.03.2026   (short, medium, long, full)
    {{ purchase.purchased_at | date("long") }}   → 14. März 2026
    {{ occurrence.due_at | datetime("short") }}  → 14.03.26, 10:00  (the recipient's zone)
    {{ complaint.opened_at | datetime("short", customer.timezone) }}
        → to a customer in Madrid: 27.05.26, 14:00
        → to staff in UTC: 27.05.26, 14:00 Europe/Madrid (12:00 UTC)
    {{ customer.points | number }}               → 12.500
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, is_currency

from worker.localtime import zone_or_default

_FORMATS = frozenset({"short", "medium", "long", "full"})
_active_locale: ContextVar[Locale | None] = ContextVar("_active_locale", default=None)
_active_zone: ContextVar[ZoneInfo | None] = ContextVar("_active_zone", default=None)
_UTC = ZoneInfo("UTC")


def _locale() -> Locale:
    return _active_locale.get() or Locale("en")


def babel_locale(candidates: Sequence[str]) -> Locale:
    """The first of ``candidates`` (``de-at``, ``de``, ``en``) that Babel knows; else English."""
    for candidate in candidates:
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            continue
    return Locale("en")


def _zone() -> ZoneInfo:
    return _active_zone.get() or _UTC


@contextmanager
def formatting_locale(locale: Locale, zone: ZoneInfo | None = None) -> Iterator[None]:
    """Filters format for ``locale`` and show times in ``zone`` (the recipient's; UTC when
    None) inside this block (one render)."""
    token = _active_locale.set(locale)
    zone_token = _active_zone.set(zone)
    try:
        yield
    finally:
        _active_zone.reset(zone_token)
        _active_locale.reset(token)


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not an amount")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount (write 1234.50)") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount")
    return amount


def _format_name(name: str) -> str:
    if name not in _FORMATS:
        raise ValueError(f"unknown format {name!r}; use one of {', '.join(sorted(_FORMATS))}")
    return name


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def money(value: Any, currency: str = "EUR") -> str:
    """``value`` as an amount of ``currency`` in the customer's locale."""
    code = str(currency).upper()
    if not is_currency(code):
        raise ValueError(f"unknown currency {currency!r}; use a code like EUR or USD")
    return format_currency(_amount(value), code, locale=_locale())


def number(value: Any) -> str:
    """``value`` with the locale's digit grouping and decimal sign."""
    return format_decimal(_amount(value), locale=_locale())


def date_filter(value: Any, format: str = "medium") -> str:
    """The calendar date of ``value`` in the recipient's locale: a calendar date (ISO text of
    ten characters, or a date) as it is, an instant on the recipient's calendar."""
    if isinstance(value, str) and len(value.strip()) == 10:
        day = date.fromisoformat(value.strip())
    elif isinstance(value, date) and not isinstance(value, datetime):
        day = value
    else:
        day = _instant(value).astimezone(_zone()).date()
    return format_date(day, _format_name(format), locale=_locale())


def datetime_filter(
    value: Any,
    format: str = "medium",
    timezone: str | None = None,
) -> str:
    """Date and time of ``value`` in the recipient's zone; with ``timezone`` (e.g.
    ``customer.timezone``) in that zone, and when that is not the recipient's zone, both zones
    are named: ``27.05.26, 14:00 Europe/Madrid (12:00 UTC)``."""
    reader = _zone()
    # An unknown or empty zone in the CRM shows the recipient's zone rather than failing.
    shown = zone_or_default(timezone if isinstance(timezone, str) else None, reader)
    instant = _instant(value)
    name = _format_name(format)
    text = format_datetime(instant, name, tzinfo=shown, locale=_locale())
    if shown.key == reader.key:
        return text
    there, here = instant.astimezone(shown), instant.astimezone(reader)
    if there.date() == here.date():
        beside = format_time(instant, "short", tzinfo=reader, locale=_locale())
    else:
        beside = format_datetime(instant, name, tzinfo=reader, locale=_locale())
    return f"{text} {shown.key} ({beside} {reader.key})"


#: Registered on the template environment under these names.
FILTERS: dict[str, Callable[..., str]] = {
    "money": money,
    "number": number,
    "date": date_filter,
    "datetime": datetime_filter,
}
