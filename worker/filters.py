"""Template filters that write money, numbers and dates the way the customer's locale does (Babel).

The locale is the customer's own (``de-AT`` writes ``€ 1.234,50``, ``de`` writes ``1.234,50 €``)
when Babel knows it, else the next step of the fallback chain; :func:`formatting_locale` sets it
around one render. Values arrive as plain data – CSV text or ISO 8601 dates – and a value that
is not an amount or a date fails the message with a reason instead of printing garbage.

In templates::

    {{ purchase.amount | money("EUR") }}        → 1.234,50 €
    {{ purchase.purchased_at | date }}           → 14.03.2026   (short, medium, long, full)
    {{ purchase.purchased_at | date("long") }}   → 14. März 2026
    {{ occurrence.due_at | datetime("short", customer.timezone) }}
    {{ customer.points | number }}               → 12.500
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, is_currency

_FORMATS = frozenset({"short", "medium", "long", "full"})
_active_locale: ContextVar[Locale | None] = ContextVar("_active_locale", default=None)


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


@contextmanager
def formatting_locale(locale: Locale) -> Iterator[None]:
    """Filters format for ``locale`` inside this block (one render)."""
    token = _active_locale.set(locale)
    try:
        yield
    finally:
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
    """The calendar date of ``value`` (ISO text or a date) in the customer's locale."""
    if isinstance(value, str) and len(value.strip()) == 10:
        day = date.fromisoformat(value.strip())
    else:
        day = _instant(value).date()
    return format_date(day, _format_name(format), locale=_locale())


def datetime_filter(
    value: Any,
    format: str = "medium",
    timezone: str | None = None,
) -> str:
    """Date and time of ``value``, shown in ``timezone`` (e.g. ``customer.timezone``) or UTC."""
    try:
        zone = ZoneInfo(timezone) if timezone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC  # an unknown zone in the CRM shows UTC rather than failing the message
    return format_datetime(_instant(value), _format_name(format), tzinfo=zone, locale=_locale())


#: Registered on the template environment under these names.
FILTERS: dict[str, Callable[..., str]] = {
    "money": money,
    "number": number,
    "date": date_filter,
    "datetime": datetime_filter,
}
