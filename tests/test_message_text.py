"""Every sample template in every locale reads as approved: greeting, grammar, plural, money,
dates and spelling per language and region (en, de, de-AT, de-CH, es, es-MX).

The approved text of each case is a file in ``tests/approved/``. After a deliberate change of
a template, look at the new text and approve it with::

    CRM_APPROVE_TEXT=1 .venv/bin/pytest tests/test_message_text.py

(the files are rewritten; review them with ``git diff tests/approved``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.samples import LOCALES, MAIL_TEMPLATES, sample_context
from worker.messages.rendering import TemplateRenderer

REPO = Path(__file__).resolve().parents[1]
APPROVED = Path(__file__).parent / "approved"
RENDERER = TemplateRenderer(REPO / "templates", "en")

#: (template, locale, variant, tag, named): every template in every locale, plus the
#: anniversary of several years (plural forms) and a customer without a name.
CASES = [(t, loc, "", "1", True) for t in MAIL_TEMPLATES for loc in LOCALES]
CASES += [("purchase-anniversary", loc, "3-years", "3", True) for loc in LOCALES]
CASES += [("birthday", loc, "no-name", "1", False) for loc in LOCALES]


def _written(template: str, locale: str, tag: str, named: bool) -> str:
    context = sample_context(locale, tag=tag, named=named, template=template)
    # The escalation is read by staff (here in UTC): times in the customer's zone name it.
    reader = "UTC" if template == "complaint-escalation" else "Europe/Zurich"
    message = RENDERER.render(template, locale, context, ZoneInfo(reader))
    return f"Subject: {message.subject}\nTemplate: {template}/{message.locale}\n\n{message.text}\n"


@pytest.mark.parametrize(
    ("template", "locale", "variant", "tag", "named"),
    CASES,
    ids=[f"{c[0]}-{c[1]}{'-' + c[2] if c[2] else ''}" for c in CASES],
)
def test_text_is_as_approved(template: str, locale: str, variant: str, tag: str, named: bool):
    text = _written(template, locale, tag, named)
    path = APPROVED / f"{template}.{locale}{'.' + variant if variant else ''}.txt"
    if os.environ.get("CRM_APPROVE_TEXT"):
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no approved text {path.name}: approve it (see the module docstring)"
    approved = path.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            approved.splitlines(True), text.splitlines(True), "approved", "rendered now"
        )
    )
    assert text == approved, f"{path.name} changed; approve it if intended:\n{diff}"


@pytest.mark.parametrize("locale", LOCALES)
def test_language_rules_hold_in_every_message(locale: str) -> None:
    """What no message may contain, whatever its template: the old gendered salutation, "None",
    ß in Swiss German, a sentence after an English or Spanish greeting in lower case, "1 years"."""
    for template, loc, _variant, tag, named in CASES:
        if loc != locale:
            continue
        text = _written(template, locale, tag, named)
        assert "Liebe(r)" not in text and "None" not in text
        assert "1 years" not in text and "1 Jahre " not in text and "1 años" not in text
        if locale == "de-CH":  # the CRM's own text (a product name) stays as recorded
            assert "ß" not in text.replace("Rahmengröße", ""), template
        body = text.split("\n\n", 1)[1]
        lines = [line for line in body.splitlines() if line.strip()]
        if locale.startswith(("en", "es")) and template != "complaint-escalation":
            assert not lines[1][0].islower(), (template, lines[1])


def test_swiss_spelling_changes_the_template_text_only() -> None:
    context = sample_context("de-CH")
    context["customer"]["last_name"] = "Strauß"
    message = RENDERER.render("birthday", "de-CH", context, ZoneInfo("Europe/Zurich"))
    assert "Herzliche Grüsse" in message.text and "Grüße" not in message.text
    assert "Jürgen Strauß" in message.text  # a name stays as the CRM records it
    german = RENDERER.render("birthday", "de-AT", context, ZoneInfo("Europe/Vienna"))
    assert "Herzliche Grüße" in german.text


def test_a_reader_whose_language_has_no_template_is_logged_once(caplog) -> None:  # type: ignore[no-untyped-def]
    renderer = TemplateRenderer(REPO / "templates", "en")
    for _ in range(3):
        message = renderer.render("birthday", "fr-FR", sample_context("fr-FR"))
    assert message.locale == "en"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "template 'birthday' has no fr/ folder: readers with locale 'fr-FR' get 'en'; "
        "add templates/birthday/fr/ to write to them in their language"
    ]
    renderer.render("birthday", "de-LI", sample_context("de-LI"))  # German: no warning
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
