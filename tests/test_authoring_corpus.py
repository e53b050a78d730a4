"""A corpus of the mistakes sales managers make in rule files and templates.

Each case breaks one thing in a valid rule or its template (a misspelling, an indentation, a
wrong type, an unknown field in each construct, an unknown template, a bad time) and states the
one diagnostic `check` must give: the file, the line and column where the mistake is written, and
the words that say how to fix it. No case may crash `check` or give a second, confusing line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.authoring.validation import check_all
from worker.messages.rendering import TemplateRenderer
from worker.rules import RuleCatalog
from worker.sources import open_source

RULE = """\
id: thanks
description: Thank you one year after a purchase
trigger:
  anniversary:
    field: purchase.purchased_at
    years: [1]
    at: "10:00"
    feb29: feb28
when: customer.email_opt_in and purchase.total > 100
grace: 1d
send_window: {from: "08:00", to: "20:00"}
send:
  - channel: email
    template: thanks
    to: customer.email
"""

TEMPLATES = {
    "subject.txt.j2": (
        "{% if customer.first_name %}{{ customer.first_name }}, thank you"
        "{% else %}Thank you{% endif %}\n"
    ),
    "body.txt.j2": """\
{% if customer.first_name %}Dear {{ customer.first_name }},{% else %}Hello,{% endif %}
you bought {{ purchase.product }} on {{ purchase.purchased_at | date("long") }}.
{% for n in range(1) %}Sent for {{ occurrence.tag }}{% endfor %}
{% macro sign(name) %}-- {{ name }}{% endmacro %}{{ sign(company.name) }}
{% include "thanks/en/footer.txt.j2" %}
""",
    "footer.txt.j2": "{{ company.address }}\n",
    "body.html.j2": """\
{% extends "_layouts/base.html.j2" %}
{% block content %}
<p>{{ customer['last_name'] }}</p>
{% endblock %}
""",
}

RULE_CASES = [
    # Misspelt keys and kinds.
    ("anniversary:", "aniversary:", 4, 3, "did you mean 'anniversary'?"),
    ("    field:", "    feild:", 5, 5, "did you mean 'field'?"),
    ("    feb29:", "    feb_29:", 8, 5, "did you mean 'feb29'?"),
    ("grace: 1d", "grase: 1d", 10, 1, "did you mean 'grace'?"),
    ("send_window:", "send_windw:", 11, 1, "did you mean 'send_window'?"),
    ("  - channel:", "  - chanel:", 13, 5, "did you mean 'channel'?"),
    ("    template:", "    templates:", 14, 5, "did you mean 'template'?"),
    ("channel: email", "channel: emial", 13, 14, "did you mean 'email'?"),
    ("feb29: feb28", "feb29: feb30", 8, 12, "did you mean 'feb28'?"),
    # Wrong indentation, tabs, quotes and brackets.
    ('    at: "10:00"', '      at: "10:00"', 7, 7, "`at:` belongs under `anniversary:`"),
    ("    feb29: feb28", "      feb29: feb28", 8, 7, "`feb29:` belongs under `anniversary:`"),
    ('    at: "10:00"', '   at: "10:00"', 7, 4, "indent it by 4 spaces"),
    ("    template: thanks", "      template: thanks", 14, 7, "lined up with `channel:`"),
    ("    to: customer.email", "  to: customer.email", 15, 3, "indent it by 4 spaces"),
    ("    years: [1]", "\tyears: [1]", 6, 1, "indent with spaces, not tabs"),
    ('at: "10:00"', 'at: "10:00', 7, 9, 'never closed; add "'),
    ('to: "20:00"}', 'to: "20:00"', 11, 14, "never closed; add }"),
    ("years: [1]", "years: [1", 6, 12, "never closed; add ]"),
    ('at: "10:00"', 'at:"10:00"', 7, 7, "put a space after the colon"),
    ("description: Thank you", "description: Note: thank you", 2, 18, "must be in quotes"),
    (
        "when: customer.email_opt_in and purchase.total > 100",
        "when: {{ customer.email_opt_in }}",
        9,
        7,
        "must be quoted",
    ),
    # Wrong types and values.
    ("years: [1]", "years: 1", 6, 12, "expected a list like [1, 2]"),
    ("years: [1]", "years: [1, two]", 6, 16, "expected a whole number"),
    ("years: [1]", "years: [0]", 6, 13, "write at least 1"),
    ("grace: 1d", "grace: 1 day", 10, 8, "write e.g. 1d"),
    ("grace: 1d", "grace: 1", 10, 8, "write e.g. 1d"),
    (
        "description: Thank you one year after a purchase",
        "description: [a, b]",
        2,
        14,
        "put it in quotes",
    ),
    ("id: thanks", "id: Thanks!", 1, 5, "use lower-case letters"),
    ("id: thanks", "id: thanks\nenabled: yes", 2, 10, "expected true or false"),
    ("grace: 1d", "grace: 1d\nexempt_from_cap: maybe", 11, 18, "expected true or false"),
    ("grace: 1d", "grace: 1d\ngrace: 2d", 11, 1, "duplicate key 'grace' (first on line 10)"),
    # Bad times and zones of the day.
    ('at: "10:00"', 'at: "25:00"', 7, 9, 'write "HH:MM"'),
    ('at: "10:00"', "at: 10:60", 7, 9, 'write "HH:MM"'),
    ('at: "10:00"', 'at: "10am"', 7, 9, 'write "HH:MM"'),
    ('at: "10:00"', 'at: "10:00 Europe/Berlin"', 7, 9, 'write "HH:MM"'),
    ('{from: "08:00"', '{from: "8"', 11, 21, 'write "HH:MM"'),
    ('{from: "08:00", to: "20:00"}', '{from: "08:00", to: "08:00"}', 11, 14, "would never open"),
    # Unknown fields in every construct of a rule file.
    ("purchase.purchased_at", "purchase.purchsed_at", 5, 12, "did you mean 'purchased_at'?"),
    ("field: purchase.purchased_at", "field: purchased_at", 5, 12, "write entity.field"),
    (
        "customer.email_opt_in and",
        "customer.emial_opt_in and",
        9,
        16,
        "did you mean 'email_opt_in'?",
    ),
    ("purchase.total > 100", "purchase.totl > 100", 9, 42, "did you mean 'total'?"),
    ("when: customer.email_opt_in", "when: vip and customer.email_opt_in", 9, 7, "it can use"),
    ("purchase.total > 100", "purchase.total >", 9, 7, "write e.g. customer.email_opt_in"),
    ("to: customer.email", "to: customer.emial", 15, 9, "did you mean 'email'?"),
    ("to: customer.email", "to: manager.email", 15, 9, "write e.g. customer.email"),
    # Unknown templates.
    ("template: thanks", "template: thank", 14, 15, "did you mean 'thanks'?"),
    ("template: thanks", "template: welcome", 14, 15, "there are: thanks"),
]

TEMPLATE_CASES = [
    ("subject.txt.j2", "{{ customer.first_name }},", "{{ customer.frist_name }},", 1, 41,
     "did you mean 'first_name'?"),
    ("body.txt.j2", "{% else %}Hello,", "{% else %}Hello {{ customer.nmae }},", 1, 88,
     "customer.nmae is not in the customer data"),
    ("body.txt.j2", "{{ purchase.product }}", "{{ purchase.prodcut }}", 2, 24,
     "did you mean 'product'?"),
    ("body.txt.j2", 'date("long")', 'dat("long")', 2, 65, "did you mean 'date'?"),
    ("body.txt.j2", "{{ occurrence.tag }}", "{{ occurrence.tagg }}", 3, 47, "did you mean 'tag'?"),
    ("body.txt.j2", "-- {{ name }}", "-- {{ name }} {{ company.nmae }}", 4, 48,
     "did you mean 'name'?"),
    ("body.txt.j2", "{{ purchase.product }}", "{{ frist_name }}", 2, 15,
     "did you mean 'customer.first_name'?"),
    ("body.txt.j2", "footer.txt.j2", "foter.txt.j2", 5, 1,
     "did you mean 'thanks/en/footer.txt.j2'?"),
    ("footer.txt.j2", "company.address", "company.adress", 1, 12, "did you mean 'address'?"),
    ("body.html.j2", "['last_name']", "['last_nmae']", 3, 17, "did you mean 'last_name'?"),
    ("body.html.j2", "{{ customer['last_name'] }}", "{{ complaint.subject }}", 3, 7,
     "unknown name 'complaint'"),
]  # fmt: skip


def check(tmp_path: Path, rule: str, template_changes: dict[str, str]) -> list[str]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "thanks.yaml").write_text(rule, encoding="utf-8")
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates" / "_layouts", templates / "_layouts")
    (templates / "thanks" / "en").mkdir(parents=True)
    for name, text in (TEMPLATES | template_changes).items():
        (templates / "thanks" / "en" / name).write_text(text, encoding="utf-8")
    problems = check_all(
        RuleCatalog(rules),
        TemplateRenderer(templates, "en"),
        open_source(str(REPO / "examples" / "crm"), None),
    )
    return [str(p).replace(f"{tmp_path}/", "") for p in problems]


def test_the_unbroken_rule_and_templates_are_clean(tmp_path):
    assert check(tmp_path, RULE, {}) == []


def test_the_corpus_is_large_enough():
    assert len(RULE_CASES) + len(TEMPLATE_CASES) >= 40


@pytest.mark.parametrize(("old", "new", "line", "col", "fix"), RULE_CASES)
def test_a_broken_rule_gives_one_diagnostic_at_its_place(tmp_path, old, new, line, col, fix):
    assert old in RULE
    found = check(tmp_path, RULE.replace(old, new, 1), {})
    assert len(found) == 1, found
    assert found[0].startswith(f"rules/thanks.yaml:{line}:{col}: "), found
    assert fix in found[0], found


@pytest.mark.parametrize(("file", "old", "new", "line", "col", "fix"), TEMPLATE_CASES)
def test_a_broken_template_gives_one_diagnostic_at_its_place(
    tmp_path, file, old, new, line, col, fix
):
    assert old in TEMPLATES[file]
    found = check(tmp_path, RULE, {file: TEMPLATES[file].replace(old, new, 1)})
    assert len(found) == 1, found
    assert found[0].startswith(f"templates/thanks/en/{file}:{line}:{col}: "), found
    assert fix in found[0], found
