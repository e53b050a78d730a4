"""Every shipped template against the dirty data of ../shared/BAD_INPUTS.md.

Empty names never print "None" or leave gaps, a hostile name is escaped in HTML and literal in
text; a typo in a shipped template is found by `check` at its line and fails that message only.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import REPO
from tests.test_headers import write_crm
from worker.authoring.validation import SAMPLE_UNSUBSCRIBE, check_all
from worker.delivery.payload import render_payload
from worker.errors import TemplateError
from worker.localtime import parse_instant
from worker.messages.rendering import TemplateRenderer
from worker.planning.context import message_context
from worker.planning.triggers import Occurrence
from worker.sources.base import Record

TEMPLATES = REPO / "templates"
RENDERER = TemplateRenderer(TEMPLATES, "en")
SHIPPED = [
    (folder.name, locale)
    for folder in sorted(TEMPLATES.iterdir())
    if folder.is_dir() and not folder.name.startswith("_")
    for locale in RENDERER.locales(folder.name)
]
SCRIPT = "<script>alert(1)</script>"


def render(template: str, locale: str, **customer: Any) -> dict[str, str]:
    """All parts of ``template`` for a customer with these fields (the rest filled in)."""
    fields = {
        "email": "kim@example.com",
        "first_name": "Kim",
        "last_name": "Lee",
        "birthday": "1990-03-14",
        "locale": locale,
        "timezone": "Europe/Berlin",
        "account_manager_email": "am@example.com",
        "email_opt_in": True,
    } | customer
    records = {
        "customer": Record("customer", "7", fields),
        "purchase": Record(
            "purchase",
            "P1",
            {
                "customer_id": "7",
                "product": "Road bike",
                "total": 100.0,
                "currency": "EUR",
                "purchased_at": datetime(2025, 3, 14, 10, tzinfo=UTC),
                "delivered_at": datetime(2025, 3, 16, 10, tzinfo=UTC),
            },
        ),
        "complaint": Record(
            "complaint",
            "C1",
            {
                "customer_id": "7",
                "subject": "Damaged parcel",
                "opened_at": datetime(2026, 3, 10, 10, tzinfo=UTC),
                "resolved_at": None,
            },
        ),
    }
    occurrence = Occurrence("r", "customer", "7", "1", datetime(2026, 3, 14, 9, tzinfo=UTC))
    context = message_context(
        records, occurrence=occurrence, company={"name": "Shop", "address": "Street 1"}
    )
    context["unsubscribe"] = SAMPLE_UNSUBSCRIBE
    if (TEMPLATES / template / locale / "webhook.json.j2").exists():
        payload = render_payload(RENDERER, template, locale, context)
        return {"json": json.loads(payload.body)["text"]}
    message = RENDERER.render(template, locale, context)
    return {"subject": message.subject, "text": message.text, "html": message.html}


def test_every_template_and_locale_is_checked():
    assert len(SHIPPED) >= 16  # 5 mail templates x en/de/es, plus the webhook alert


@pytest.mark.parametrize(("template", "locale"), SHIPPED)
@pytest.mark.parametrize(
    "names",
    [
        {"first_name": ""},
        {"first_name": None},
        {"first_name": None, "last_name": None},
        {"first_name": "", "last_name": ""},
    ],
    ids=["empty", "none", "both-none", "both-empty"],
)
def test_empty_names_read_naturally(template, locale, names):
    for part, text in render(template, locale, **names).items():
        assert "None" not in text, (part, text)
        for line in text.splitlines():
            # No gap where the name was: "Dear ,", "Customer:  Lee", "Happy birthday, !".
            assert not re.search(r"\S {2,}\S| [,!:?]|, [!?]", line), (part, line)


@pytest.mark.parametrize(("template", "locale"), SHIPPED)
def test_a_script_name_is_escaped_in_html_and_literal_in_text(template, locale):
    parts = render(template, locale, first_name=SCRIPT)
    assert SCRIPT not in parts.get("html", "")
    named = [text for text in parts.values() if SCRIPT in text or "&lt;script&gt;" in text]
    assert named, parts  # every shipped template greets or names the customer somewhere
    for part, text in parts.items():
        if part == "html":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        elif "script" in text:
            assert SCRIPT in text and "&lt;" not in text


def test_a_field_typo_is_found_by_check_and_fails_only_its_message(
    make_runtime, make_settings, smtp_server, tmp_path
):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    target = templates / "birthday" / "de" / "body.txt.j2"
    lines = target.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "Ihr Vorname: {{ customer.frist_name }}")
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    crm = write_crm(
        tmp_path / "crm",
        [
            {"id": "1", "email": "de@example.com", "first_name": "Jörg", "locale": "de"},
            {"id": "2", "email": "en@example.com", "first_name": "Ann", "locale": "en"},
        ],
    )
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_TEMPLATES_DIR=str(templates),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    problems = check_all(runtime.catalog, runtime.renderer, runtime.source)
    # This small CRM has no account_manager_email column, which check rightly reports for the
    # complaint templates; the birthday templates must show the typo and nothing else.
    in_templates = [p for p in problems if p.path.is_relative_to(templates / "birthday")]
    assert [(p.path, p.line) for p in in_templates] == [(target, 3)]
    assert "frist_name" in in_templates[0].message
    summary = runtime.run_once(parse_instant("2026-03-14T10:00:00Z"))
    assert summary.states == {"sent": 1, "failed": 1}
    assert [r.recipients for r in smtp_server.received] == [["en@example.com"]]
    failed = runtime.ledger.get("birthday-greeting:customer:1:2026/email")
    assert failed["state"] == "failed" and "frist_name" in failed["reason"]


def test_a_missing_column_is_an_error_not_a_greeting_to_nobody():
    # A record without the field at all (a source that lacks the column) fails loudly; `check`
    # reports it (tests/test_rule_files.py) before any customer is written to.
    with pytest.raises(TemplateError, match="first_name"):
        RENDERER.render("birthday", "en", {"customer": {"id": "7"}, "company": {}})


def test_check_of_a_crm_without_purchases_or_complaints_finds_nothing(
    make_runtime, make_settings, tmp_path
):
    # A fresh CRM: customers only. The shipped rules and templates are fine; `check` used to
    # report "'customer' is undefined" and "'' is not an ISO 8601 date" for nine templates.
    crm = tmp_path / "crm"
    shutil.copytree(REPO / "examples" / "crm", crm)
    for name in ("purchases.csv", "complaints.csv"):
        header = (crm / name).read_text(encoding="utf-8").splitlines()[0]
        (crm / name).write_text(header + "\n", encoding="utf-8")
    runtime = make_runtime(make_settings(CRM_SOURCE=str(crm)))
    assert check_all(runtime.catalog, runtime.renderer, runtime.source) == []


@pytest.mark.parametrize(
    ("source", "first_name", "expected"),
    [
        ('{{ "Hello " ~ customer.first_name ~ "!" }}', None, "Hello !"),
        ('{{ "Hello " ~ customer.first_name ~ "!" }}', "Ann", "Hello Ann!"),
        ('{{ ("Hi " ~ customer.first_name) | trim }}', None, "Hi"),
        ('{% set n = "x" ~ customer.first_name %}{{ n }}', None, "x"),
        ('{% macro hi(n) %}{{ "Hi " ~ n ~ "!" }}{% endmacro %}{{ hi(customer.x) }}', None, "Hi !"),
        ("{{ customer.first_name ~ 0 ~ false }}", None, "0False"),
    ],
)
def test_joining_with_tilde_never_writes_none(tmp_path, source, first_name, expected):
    folder = tmp_path / "t" / "en"
    folder.mkdir(parents=True)
    for part in ("subject.txt.j2", "body.txt.j2", "body.html.j2"):
        (folder / part).write_text(source, encoding="utf-8")
    renderer = TemplateRenderer(tmp_path, "en")
    customer = {"first_name": first_name, "x": first_name}
    message = renderer.render("t", "en", {"customer": customer})
    assert (message.subject, message.text, message.html) == (expected,) * 3


def test_a_typo_joined_with_tilde_is_still_an_error(tmp_path):
    folder = tmp_path / "t" / "en"
    folder.mkdir(parents=True)
    for part in ("subject.txt.j2", "body.txt.j2", "body.html.j2"):
        (folder / part).write_text('{{ "Hi " ~ customer.frist_name }}', encoding="utf-8")
    with pytest.raises(TemplateError, match="frist_name"):
        TemplateRenderer(tmp_path, "en").render("t", "en", {"customer": {"first_name": "A"}})
