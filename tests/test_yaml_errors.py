"""YAML slips in rule files, said in the words of the sales manager who made them.

Each case is a rule file with one typical slip, and what `check` says about it: the place,
what is wrong in plain words and what to write instead; the parser's own jargon ("mapping values
are not allowed here") is never shown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import base_env, crm_worker
from worker.errors import RuleError
from worker.rules import load_rule_text

RULE = """\
id: birthday-greeting
trigger:
  birthday:
    field: customer.birthday
    at: "09:00"
when: customer.email_opt_in
send_window: {from: "08:00", to: "20:00"}
send:
  - channel: email
    template: birthday
    to: customer.email
"""


@pytest.mark.parametrize(
    ("slip", "expected"),
    [
        (
            ('    at: "09:00"', '      at: "09:00"'),
            "5:7: this line is indented more than the one above; `at:` belongs under "
            "`birthday:`, lined up with `field:`",
        ),
        (
            ('    at: "09:00"', '   at: "09:00"'),
            "5:4: this line is indented less than the one above; to put `at:` next to `field:`, "
            "indent it by 4 spaces",
        ),
        (
            ("    template: birthday", "      template: birthday"),
            "10:7: this line is indented more than the one above; `template:` belongs under "
            "`send:`, lined up with `channel:`",
        ),
        (
            ("    template: birthday", "  template: birthday"),
            "10:3: this line is indented less than the one above; to put `template:` next to "
            "`channel:`, indent it by 4 spaces",
        ),
        (("  birthday:", "\tbirthday:"), "3:1: a tab is used here; indent with spaces"),
        (('at: "09:00"', 'at: "09:00'), '5:9: the quote " that starts here is never closed'),
        (('"20:00"}', '"20:00"'), "7:14: the { that starts here is never closed; add }"),
        (('at: "09:00"', 'at:"09:00"'), "5:7: put a space after the colon: `at: …`"),
        (
            ("when: customer.email_opt_in", "when: note: opted in"),
            '6:11: a value with ": " in it must be in quotes: when: "note: opted in"',
        ),
        (("id: birthday-greeting", "id: @birthday"), "1:5: a value starting with @ must be in"),
        (
            ("when: customer.email_opt_in", "when: {{ customer.email_opt_in }}"),
            '6:7: {{ ... }} must be quoted: "{{ ... }}"; a when: condition needs no braces at all '
            "(when: customer.email_opt_in)",
        ),
    ],
)
def test_a_yaml_slip_is_explained_in_plain_words(slip, expected):
    text = RULE.replace(*slip)
    assert text != RULE
    with pytest.raises(RuleError) as info:
        load_rule_text(text, Path("r.yaml"))
    found = [str(p) for p in info.value.problems]
    assert len(found) == 1 and found[0].startswith(f"r.yaml:{expected}"), found


def test_check_shows_the_line_and_a_caret(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday.yaml").write_text(
        RULE.replace('    at: "09:00"', '      at: "09:00"'), encoding="utf-8"
    )
    result = crm_worker(
        "check", env=base_env(tmp_path) | {"CRM_RULES_DIR": str(rules)}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{rules / 'birthday.yaml'}:5:7: this line is indented more than the one above; `at:` "
        "belongs under `birthday:`, lined up with `field:`",
        '  5 |       at: "09:00"',
        "    |       ^",
    ]
    assert "mapping values" not in result.stdout + result.stderr
