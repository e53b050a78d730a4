"""Rule files as sales managers write them: every mistake is an error with its position."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import RuleError
from worker.rules import RuleCatalog, load_rule_text

GOOD = """\
id: birthday-greeting
trigger:
  birthday:
    at: "09:00"
send:
  - channel: email
    template: birthday
    to: customer.email
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RuleError) as info:
        load_rule_text(text, Path("r.yaml"))
    return [str(p) for p in info.value.problems]


def test_the_sample_rule_loads():
    rule = load_rule_text(GOOD, Path("r.yaml"))
    assert rule.id == "birthday-greeting" and rule.trigger.kind == "birthday"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace('at: "09:00"', "at: 25:00"),
            "r.yaml:4:9: trigger.birthday.at: '25:00' is not a time of day",
        ),
        (
            GOOD.replace("birthday:\n", "birthdy:\n", 1),
            "r.yaml:3:3: unknown key 'birthdy'; did you mean 'birthday'?",
        ),
        (GOOD.replace("    to:", "    sned_at: x\n    to:"), "r.yaml:8:5: unknown key 'sned_at'"),
        (GOOD + "enabled: yes\n", "r.yaml:9:10: enabled: expected true or false, got 'yes'"),
        (GOOD + "id: again\n", "r.yaml:9:1: duplicate key 'id' (first on line 1)"),
        (GOOD.replace("channel: email", "channel: emial"), "did you mean 'email'?"),
        ("", "r.yaml:1:1: the file is empty"),
        ("# only a comment\n", "r.yaml:1:1: the file is empty"),
        (
            "id: !!python/object:os.system x\n",
            "r.yaml:1:5: tag tag:yaml.org,2002:python/object:os.system is not allowed",
        ),
        ("id: x\ntrigger:\n\tbirthday: {}\n", "indent with spaces, not tabs"),
        ("id: x\nwhen: {{ customer.vip }}\n", "must be quoted"),
        (
            GOOD.replace("id: birthday-greeting", "id: 123"),
            "r.yaml:1:5: id: expected text, got 123; put it in quotes",
        ),
        ("- just\n- a list\n", "a rule file must be a mapping"),
    ],
)
def test_mistakes_point_at_their_place(text, expected):
    found = problems(text)
    assert any(expected in p for p in found), found


def test_at_9_30_is_half_past_nine_not_570():
    rule = load_rule_text(GOOD.replace('at: "09:00"', "at: 9:30"), Path("r.yaml"))
    assert rule.trigger.spec.at.strftime("%H:%M") == "09:30"


def test_leading_zeros_and_decimals_keep_their_digits():
    rule = load_rule_text(
        GOOD.replace("birthday-greeting", "0123") + "description: 1.10\n", Path("r.yaml")
    )
    assert rule.id == "0123" and rule.description == "1.10"


def test_bom_and_crlf_are_fine():
    rule = load_rule_text("\ufeff" + GOOD.replace("\n", "\r\n"), Path("r.yaml"))
    assert rule.id == "birthday-greeting"


def test_broken_edit_keeps_the_last_valid_rule(tmp_path):
    path = tmp_path / "birthday.yaml"
    other = tmp_path / "other.yaml"
    path.write_text(GOOD, encoding="utf-8")
    other.write_text(GOOD.replace("birthday-greeting", "other"), encoding="utf-8")
    catalog = RuleCatalog(tmp_path)
    assert catalog.refresh() == []
    path.write_text(GOOD.replace('"09:00"', '"09:99"') + "# edited\n", encoding="utf-8")
    found = catalog.refresh()
    assert [p.line for p in found] == [4]
    assert catalog.get("birthday-greeting") is not None  # the previous version stays active
    assert catalog.get("other") is not None
    path.write_text(GOOD.replace('"09:00"', '"10:00"'), encoding="utf-8")
    assert catalog.refresh() == []
    rule = catalog.get("birthday-greeting")
    assert rule is not None and rule.trigger.spec.at.hour == 10
