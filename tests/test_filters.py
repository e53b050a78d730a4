"""Money, numbers and dates in templates are written the customer's way (Babel)."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker.errors import TemplateError
from worker.messages.filters import (
    babel_locale,
    formatting_locale,
    greeting,
    in_language,
    plural,
    quoted,
)
from worker.messages.rendering import TemplateRenderer

LINE = (
    '{{ amount | money("EUR") }} | {{ day | date("long") }} | {{ n | number }}'
    ' | {{ ts | datetime("short", zone) }}'
)
CONTEXT = {"amount": "1234.5", "day": "2026-03-14", "n": 12500, "ts": "2026-03-14T08:00:00Z"}


def renderer(tmp_path: Path, subject: str = LINE) -> TemplateRenderer:
    for locale in ("en", "de", "es"):
        folder = tmp_path / "t" / locale
        folder.mkdir(parents=True)
        (folder / "subject.txt.j2").write_text(subject, encoding="utf-8")
        (folder / "body.txt.j2").write_text(subject, encoding="utf-8")
        (folder / "body.html.j2").write_text("<p>" + subject + "</p>", encoding="utf-8")
    return TemplateRenderer(tmp_path, "en")


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("de-AT", "€\xa01.234,50 | 14. März 2026 | 12.500 | 14.03.26, 09:00"),
        ("de", "1.234,50\xa0€ | 14. März 2026 | 12.500 | 14.03.26, 09:00"),
        ("es", "1.234,50\xa0€ | 14 de marzo de 2026 | 12.500 | 14/3/26, 9:00"),
        # Regional variants: Swiss grouping with an apostrophe, Mexican dates and a.m./p.m.
        ("de-CH", "EUR\xa01'234.50 | 14. März 2026 | 12'500 | 14.03.26, 09:00"),
        ("es-MX", "EUR1,234.50 | 14 de marzo de 2026 | 12,500 | 14/03/26, 9:00\u202fa.m."),
        ("en", "€1,234.50 | March 14, 2026 | 12,500 | 3/14/26, 9:00\u202fAM"),
        # A language without templates falls back to English, and so does its formatting.
        ("fr-FR", "€1,234.50 | March 14, 2026 | 12,500 | 3/14/26, 9:00\u202fAM"),
        (None, "€1,234.50 | March 14, 2026 | 12,500 | 3/14/26, 9:00\u202fAM"),
    ],
)
def test_formats_follow_the_customers_locale(tmp_path, locale, expected):
    # The customer (the reader) is in Berlin: their own time, no zone named.
    message = renderer(tmp_path).render(
        "t", locale, CONTEXT | {"zone": "Europe/Berlin"}, ZoneInfo("Europe/Berlin")
    )
    assert message.text == expected
    # The subject is one clean line: non-breaking spaces become plain ones.
    assert message.subject == " ".join(expected.split())


def test_unknown_time_zone_shows_the_readers_time(tmp_path):
    templates = renderer(tmp_path)
    message = templates.render("t", "de", CONTEXT | {"zone": "Mars/Olympus"})
    assert message.text.endswith("14.03.26, 08:00")  # no reader's zone given: UTC
    message = templates.render(
        "t", "de", CONTEXT | {"zone": "Mars/Olympus"}, ZoneInfo("Asia/Tokyo")
    )
    assert message.text.endswith("14.03.26, 17:00")


@pytest.mark.parametrize(
    ("template", "context", "reason"),
    [
        ('{{ x | money("EUR") }}', {"x": "12,x"}, "not an amount"),
        ('{{ x | money("EUR") }}', {"x": None}, "not an amount"),
        ('{{ x | money("XYZW") }}', {"x": "1"}, "unknown currency"),
        ("{{ x | date }}", {"x": "0000-00-00"}, "ValueError"),
        ('{{ x | date("fancy") }}', {"x": "2026-03-14"}, "unknown format 'fancy'"),
    ],
)
def test_bad_values_fail_the_message_with_a_reason(tmp_path, template, context, reason):
    with pytest.raises(TemplateError, match=reason):
        renderer(tmp_path, template).render("t", "de", context)


@pytest.mark.parametrize(
    ("locale", "customer", "expected"),
    [
        ("de", {"first_name": "Jürgen", "last_name": "Müller"}, "Guten Tag Jürgen Müller,"),
        ("de-CH", {"first_name": "Jürgen", "last_name": None}, "Hallo Jürgen,"),
        ("de", {"first_name": " ", "last_name": "Müller"}, "Guten Tag,"),
        ("en", {"first_name": "Ann", "last_name": "Lee"}, "Dear Ann,"),
        ("en", {}, "Hello,"),  # a CRM without name columns
        ("es-MX", {"first_name": "Ana"}, "Hola, Ana:"),
        ("es", {"first_name": None}, "Hola:"),
        ("fr", {"first_name": "Zoé"}, "Dear Zoé,"),  # no French forms: the English ones
    ],
)
def test_greeting_fits_the_data_and_the_language(locale, customer, expected):
    with formatting_locale(babel_locale([locale])):
        assert greeting(customer) == expected


@pytest.mark.parametrize(
    ("locale", "one", "three", "quote"),
    [
        ("en", "one year ago", "3 years ago", "“Road bike”"),
        ("de", "vor einem Jahr", "vor 3 Jahren", "„Road bike“"),
        ("de-CH", "vor einem Jahr", "vor 3 Jahren", "«Road bike»"),
        ("es-MX", "hace un año", "hace 3 años", "«Road bike»"),
    ],
)
def test_plural_and_quotes_follow_the_readers_language(locale, one, three, quote):
    forms = {
        "en": ("one year ago", "# years ago"),
        "de": ("vor einem Jahr", "vor # Jahren"),
        "es": ("hace un año", "hace # años"),
    }[locale[:2]]
    with formatting_locale(babel_locale([locale])):
        assert plural("1", *forms) == one
        assert plural(3, *forms) == three
        assert quoted("Road bike") == quote
        assert quoted(None) == ""
        product = {"product": "Road bike", "product_de": "Rennrad", "product_de_ch": "Velo"}
        expected = {"de": "Rennrad", "de-CH": "Velo"}.get(locale, quote)
        assert in_language(product, "product") == expected
