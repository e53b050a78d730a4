"""`check` reads every branch of every template, and a running worker refuses unknown fields.

A sample customer takes one branch of an `{% if %}`; a typo in the other branch used to pass
`check` and fail only for the customers who took it. These cases put a typo where no sample
record goes (a false branch, a macro never called, an included file, the shared layout) and
expect it at its file:line:col with a "did you mean".
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.authoring.validation import check_all
from worker.localtime import parse_instant

NOW = parse_instant("2026-03-14T10:00:00Z")
BODY = "birthday/en/body.txt.j2"


def templates_with(tmp_path: Path, files: dict[str, str]) -> Path:
    """The shipped templates with ``files`` (path under templates/ → text) written over."""
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    for name, text in files.items():
        (templates / name).parent.mkdir(parents=True, exist_ok=True)
        (templates / name).write_text(text, encoding="utf-8")
    return templates


LAYOUT = (REPO / "templates/_layouts/base.html.j2").read_text(encoding="utf-8")


def position_in(text: str, snippet: str, word: str) -> str:
    """``line:col`` of ``word`` in the first line of ``text`` that holds ``snippet``."""
    for n, line in enumerate(text.splitlines(), start=1):
        if snippet in line:
            return f"{n}:{line.index(snippet) + snippet.index(word) + 1}"
    raise AssertionError(f"{snippet!r} not found")


@pytest.mark.parametrize(
    ("files", "where", "message"),
    [
        (
            {BODY: "Hi\n{% if customer.email %}{% else %}{{ customer.frist_name }}{% endif %}"},
            f"{BODY}:2:46",
            "customer.frist_name is not in the customer data; did you mean 'first_name'?",
        ),
        (
            {BODY: "Hi\n{% if false %}\n  {{ customer.frist_name }}\n{% endif %}\n"},
            f"{BODY}:3:15",
            "customer.frist_name is not in the customer data; did you mean 'first_name'?",
        ),
        (
            {BODY: "{% macro hello(who) %}{{ who }} {{ customer['emial'] }}{% endmacro %}x\n"},
            f"{BODY}:1:46",
            "customer.emial is not in the customer data; did you mean 'email'?",
        ),
        (
            {
                BODY: "Hi\n{% include 'birthday/en/signature.txt.j2' %}\n",
                "birthday/en/signature.txt.j2": "--\n{{ company.nmae }}\n",
            },
            "birthday/en/signature.txt.j2:2:12",
            "company.nmae is not in the company data; did you mean 'name'?",
        ),
        (
            {
                "_layouts/base.html.j2": LAYOUT.replace(
                    "{{ company.address }}", "{{ company.adress }}"
                )
            },
            f"_layouts/base.html.j2:{position_in(LAYOUT, '{{ company.address }}', 'address')}",
            "company.adress is not in the company data; did you mean 'address'?",
        ),
        (
            {
                BODY: "{% if customer.vip is defined and customer.vip %}VIP{% endif %}\n"
                "{{ customer.frist_name }}\n"
            },
            f"{BODY}:2:13",
            "customer.frist_name is not in the customer data; did you mean 'first_name'?",
        ),
        (
            {BODY: "{% for p in [1, 2] %}{{ p }}{{ loop.index }}{% endfor %}{{ frist_name }}\n"},
            f"{BODY}:1:60",
            "unknown name 'frist_name'; this message can use company, customer, occurrence, "
            "unsubscribe; did you mean 'customer.first_name'?",
        ),
        (
            {BODY: "{{ purchase.product }}\n"},
            f"{BODY}:1:4",
            "unknown name 'purchase'; this message can use company, customer, occurrence, "
            "unsubscribe",
        ),
    ],
)
def test_check_finds_a_typo_in_every_branch(
    tmp_path, make_runtime, make_settings, files, where, message
):
    templates = templates_with(tmp_path, files)
    runtime = make_runtime(make_settings(CRM_TEMPLATES_DIR=str(templates)))
    found = [str(p) for p in check_all(runtime.catalog, runtime.renderer, runtime.source)]
    assert f"{templates / where}: {message}" in found, found
    # Exactly the typo: the render of the same template does not report it a second time.
    assert len([f for f in found if f.startswith(str(templates / where.split(":")[0]))]) == 1


def test_check_reports_a_layout_typo_once_however_many_templates_use_it(
    tmp_path, make_runtime, make_settings
):
    templates = templates_with(
        tmp_path, {"_layouts/base.html.j2": LAYOUT.replace("company.name", "company.nam", 1)}
    )
    runtime = make_runtime(make_settings(CRM_TEMPLATES_DIR=str(templates)))
    found = [str(p) for p in check_all(runtime.catalog, runtime.renderer, runtime.source)]
    where = position_in(LAYOUT, "company.name", "name")
    assert [f for f in found if "company.nam " in f] == [
        f"{templates / '_layouts/base.html.j2'}:{where}: company.nam is not in the company data; "
        "did you mean 'name'?"
    ]


GREETING = (REPO / "rules" / "birthday-greeting.yaml").read_text(encoding="utf-8")


def test_a_running_worker_refuses_a_condition_on_a_missing_field(
    tmp_path, make_runtime, make_settings, caplog
):
    rules = tmp_path / "rules"
    rules.mkdir()
    rule = rules / "birthday-greeting.yaml"
    rule.write_text(GREETING, encoding="utf-8")
    runtime = make_runtime(make_settings(CRM_RULES_DIR=str(rules)))
    assert runtime.catalog.get("birthday-greeting") is not None

    rule.write_text(
        GREETING.replace("when: customer.email_opt_in", "when: customer.newsletter"),
        encoding="utf-8",
    )
    with caplog.at_level(logging.INFO):
        first = runtime.scheduler.run_pass(NOW)
        runtime.scheduler.run_pass(parse_instant("2026-03-14T10:05:00Z"))
    # The previous version stays live: opted-in customers still get their birthday mail.
    assert [k for k in first.queued if k.startswith("birthday-greeting:")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"invalid rule: {rule}:10:16: condition uses customer.newsletter, which is not in the "
        "customer data (keeping the previous version of birthday-greeting)"
    ]


def test_a_new_rule_on_a_missing_field_is_not_run_at_all(
    tmp_path, make_runtime, make_settings, caplog
):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "vip.yaml").write_text(
        GREETING.replace("birthday-greeting", "vip").replace(
            "when: customer.email_opt_in", "when: customer.vip and customer.email_opt_in"
        ),
        encoding="utf-8",
    )
    with caplog.at_level(logging.ERROR):
        runtime = make_runtime(make_settings(CRM_RULES_DIR=str(rules)))
        report = runtime.scheduler.run_pass(NOW)
    assert report.queued == [] and len(runtime.catalog) == 0
    assert "vip.yaml:10:16: condition uses customer.vip" in caplog.text
