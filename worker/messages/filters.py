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
    {{ customer | greeting }}                    → Guten Tag Jürgen Müller,
    {{ occurrence.tag | plural("one year ago", "# years ago") }}   → 3 years ago
    {{ complaint.subject | quoted }}             → „Paket beschädigt“
    {{ purchase | in_language("product") }}      → product_de if the CRM has it, else „Road bike“
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


def plural(
    value: Any,
    one: str,
    other: str,
    *,
    zero: str | None = None,
    two: str | None = None,
    few: str | None = None,
    many: str | None = None,
) -> str:
    """The form of the reader's language for the number ``value`` (CLDR plural rules through
    Babel), with ``#`` replaced by the number written the reader's way. Forms a language does
    not use may be left out; a missing one falls back to ``other``.

    ``{{ occurrence.tag | plural("one year ago", "# years ago") }}`` → ``one year ago``,
    ``3 years ago``; in German ``plural("vor einem Jahr", "vor # Jahren")``."""
    amount = _amount(value)
    forms = {"zero": zero, "one": one, "two": two, "few": few, "many": many, "other": other}
    chosen = forms.get(_locale().plural_form(amount)) or other
    return chosen.replace("#", format_decimal(amount, locale=_locale()))


#: Salutations per language: (first and last name, first name only, no name). The CRM has no
#: gender field, so every form is neutral; the German templates say "Sie", hence the full name.
_GREETINGS: dict[str, tuple[str, str, str]] = {
    "de": ("Guten Tag {first} {last},", "Hallo {first},", "Guten Tag,"),
    "es": ("Hola, {first}:", "Hola, {first}:", "Hola:"),
    "en": ("Dear {first},", "Dear {first},", "Hello,"),
}


def _name_part(customer: dict[str, Any], field: str) -> str:
    value = customer.get(field)
    return str(value).strip() if value is not None else ""


def greeting(customer: Any) -> str:
    """The salutation of a message to ``customer`` in the reader's language: German "Guten Tag
    Jürgen Müller," (full name) or "Hallo Jürgen," (first name only), English "Dear Ann,",
    Spanish "Hola, Ana:"; without a name "Guten Tag," / "Hello," / "Hola:". A missing or empty
    name column never shows as "None". Plain text: the HTML part escapes it like any value.

    ``{{ customer | greeting }}``; English and Spanish continue with a capital letter, German
    in lower case."""
    if not isinstance(customer, dict):
        raise ValueError("greeting needs the customer record: customer | greeting")
    full, first_only, nameless = _GREETINGS.get(_locale().language, _GREETINGS["en"])
    first, last = _name_part(customer, "first_name"), _name_part(customer, "last_name")
    if first and last:
        return full.format(first=first, last=last)
    return first_only.format(first=first) if first else nameless


#: Quotation marks per language (and region) the reader writes with: CRM text shown verbatim
#: inside a sentence (a product name, a complaint's subject) is quoted, so the reader sees it
#: is a name as recorded, not a sentence in their language.
_QUOTES: dict[str, tuple[str, str]] = {
    "de": ("\u201e", "\u201c"),  # „…“
    "de_CH": ("\u00ab", "\u00bb"),  # «…»
    "es": ("\u00ab", "\u00bb"),  # «…»
    "fr": ("\u00ab\u00a0", "\u00a0\u00bb"),
}
_ENGLISH_QUOTES = ("\u201c", "\u201d")  # “…”


def quoted(value: Any) -> str:
    """``value`` in the reader's quotation marks (``„Road bike“`` in German); an empty value
    stays empty (no lone quotation marks)."""
    if value is None or value == "":
        return ""
    locale = _locale()
    marks = (
        _QUOTES.get(f"{locale.language}_{locale.territory}")
        or _QUOTES.get(locale.language)
        or _ENGLISH_QUOTES
    )
    return f"{marks[0]}{value}{marks[1]}"


def in_language(record: Any, field: str) -> str:
    """A record's text field in the reader's language when the CRM has it in a column of its
    own (``product_de_ch``, ``product_de``, ``product_es``), else the field as recorded, in
    quotation marks (:func:`quoted`) so it reads as a name, not as a translation slip.

    ``{{ purchase | in_language("product") }}`` → ``Rennrad`` (from ``product_de``), or
    ``„Road bike“`` when the CRM has no German name."""
    if not isinstance(record, dict):
        raise ValueError("in_language needs a record, e.g. purchase | in_language('product')")
    locale = _locale()
    names = [f"{field}_{locale.language}"]
    if locale.territory:
        names.insert(0, f"{field}_{locale.language}_{locale.territory}".lower())
    for name in names:
        translated = record.get(name)
        if translated:
            return str(translated)
    if field not in record:
        raise ValueError(f"the record has no field {field!r}")
    return quoted(record[field])


#: Registered on the template environment under these names.
FILTERS: dict[str, Callable[..., str]] = {
    "money": money,
    "number": number,
    "date": date_filter,
    "datetime": datetime_filter,
    "plural": plural,
    "greeting": greeting,
    "quoted": quoted,
    "in_language": in_language,
}
