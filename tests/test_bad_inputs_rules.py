"""Rule files from ../shared/BAD_INPUTS.md: YAML 1.1 traps, hostile YAML, huge and odd files.

Each case states what a sales manager wrote and what they get back: the value they meant, or an
error with file:line:col. Nothing here may crash a pass or `check` with a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.test_cli import base_env, crm_worker
from tests.test_rule_files import GOOD
from worker.constants import MAX_RULE_DEPTH, MAX_RULE_FILE_BYTES, MAX_RULE_NODES
from worker.errors import RuleError
from worker.localtime import parse_instant
from worker.rules import RuleCatalog, load_rule_text
from worker.rules.loader import load_rule_file, parse_yaml


@pytest.mark.parametrize(
    ("yaml", "meant"),
    [
        ("countries: [DE, NO]", ["DE", "NO"]),  # Norway, not False
        ("answer: no", "no"),
        ("answer: off", "off"),
        ("code: 0123", "0123"),  # not 83
        ("code: 0o17", "0o17"),
        ("code: 0x1F", "0x1F"),
        ("code: 1_000", "1_000"),
        ("version: 1.10", "1.10"),  # not 1.1
        ("version: 1e3", "1e3"),
        ("at: 9:30", "9:30"),  # not 570
        ("day: 2026-02-30", "2026-02-30"),  # an impossible date stays text, no ValueError
        ("count: 7", 7),
        ("flag: true", True),
        ("nothing: ~", None),
    ],
)
def test_yaml_1_1_traps_keep_what_was_written(yaml, meant):
    data, _ = parse_yaml(yaml + "\n", Path("r.yaml"))
    assert list(data.values()) == [meant]


def test_values_reach_the_rule_as_written():
    text = GOOD.replace("birthday-greeting", "0123") + "description: no\n"
    rule = load_rule_text(text.replace('at: "09:00"', "at: 9:30"), Path("r.yaml"))
    assert (rule.id, rule.description, rule.trigger.spec.at.strftime("%H:%M")) == (
        "0123",
        "no",
        "09:30",
    )


DEEP = "id: x\nsend: " + "[" * 600 + "]" * 600 + "\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcde", "bcdef", strict=True)
)
CRLF_BOM = "\ufeff" + GOOD.replace("\n", "\r\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "enabled: yes\n", "r.yaml:9:10: enabled: expected true or false, got 'yes'"),
        (GOOD + "enabled: NO\n", "r.yaml:9:10: enabled: expected true or false, got 'NO'"),
        (
            GOOD.replace('"09:00"', '"24:00"'),
            "r.yaml:4:9: trigger.birthday.at: '24:00' is not a time of day",
        ),
        (GOOD.replace('"09:00"', "0900"), "r.yaml:4:9: trigger.birthday.at: '0900' is not a time"),
        (GOOD.replace('"09:00"', "9.30"), "r.yaml:4:9: trigger.birthday.at: '9.30' is not a time"),
        (GOOD + "description: true\n", "r.yaml:9:14: description: expected text, got True"),
        (GOOD.replace("id: birthday-greeting", "id: ~"), "r.yaml:1:5: id: expected text, got None"),
        # Positions are those of the editor, with a BOM and Windows or old-Mac line ends.
        (CRLF_BOM.replace('"09:00"', '"25:00"'), "r.yaml:4:9: trigger.birthday.at: '25:00'"),
        (CRLF_BOM.replace("id: birthday-greeting", "id: 123"), "r.yaml:1:5: id: expected text"),
        (GOOD.replace("\n", "\r").replace('"09:00"', '"25:00"'), "r.yaml:4:9: trigger.birthday"),
        # Hostile or odd YAML: refused with a position, never loaded with an unsafe loader.
        (DEEP, f"r.yaml:2:{6 + MAX_RULE_DEPTH}: nested more than {MAX_RULE_DEPTH} levels deep"),
        ("a: [" + "a, " * MAX_RULE_NODES + "a]\n", f"more than {MAX_RULE_NODES} values"),
        (LAUGHS, f"more than {MAX_RULE_NODES} values (aliases expanded)"),
        ("base: &b {channel: email}\nsend:\n  - <<: *b\n", "r.yaml:3:5: merge keys (<<) are not"),
        (GOOD.replace("to: customer.email", "to: !env HOME"), "r.yaml:8:9: tag !env is not"),
        ("id: !!set {a, b}\n", "r.yaml:1:5: tag tag:yaml.org,2002:set is not allowed"),
        ("id: !!binary aGk=\n", "r.yaml:1:5: tag tag:yaml.org,2002:binary is not allowed"),
        (GOOD + "---\n" + GOOD, "r.yaml:9:1: but found another document"),
        (GOOD + "? [a]\n: 1\n", "r.yaml:9:3: a key must be a plain word"),
        (GOOD + "\0", "r.yaml:1:1: the file contains NUL bytes"),
        ("\ufeff", "r.yaml:1:1: the file is empty"),
        ("\r\n# just a comment\r\n\r\n", "r.yaml:1:1: the file is empty"),
    ],
)
def test_bad_rule_text_is_an_error_at_its_place(text, expected):
    with pytest.raises(RuleError) as info:
        load_rule_text(text, Path("r.yaml"))
    found = [str(p) for p in info.value.problems]
    assert any(expected in p for p in found), found


def test_aliases_within_the_limits_are_expanded():
    text = GOOD.replace("template: birthday", "template: &t birthday") + "description: *t\n"
    assert load_rule_text(text, Path("r.yaml")).description == "birthday"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id: x\ndescription: " + b"a" * (10 * 1024 * 1024) + b"\n", "1:1: file over"),
        (GOOD.encode("latin-1") + "description: Grüße\n".encode("latin-1"), "1:1: not UTF-8"),
        (b"\xef\xbb\xbf" + CRLF_BOM[1:].replace('"09:00"', '"25:00"').encode(), "4:9: trigger"),
    ],
)
def test_files_that_are_too_big_or_not_text(tmp_path, content, expected):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(RuleError) as info:
        load_rule_file(path)
    assert str(info.value.problems[0]).startswith(f"{path}:{expected}")


def test_hostile_edit_while_running_keeps_the_previous_version(tmp_path, caplog):
    rule = tmp_path / "birthday.yaml"
    rule.write_text(GOOD, encoding="utf-8")
    catalog = RuleCatalog(tmp_path)
    assert catalog.refresh() == []
    rule.write_text(DEEP, encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="worker.rules.catalog"):
        found = catalog.refresh()
    assert [(p.line, p.col) for p in found] == [(2, 6 + MAX_RULE_DEPTH)]
    assert catalog.get("birthday-greeting") is not None
    assert f"{rule}:2:{6 + MAX_RULE_DEPTH}" in caplog.text
    assert "keeping the previous version of birthday-greeting" in caplog.text


def test_broken_edit_while_running_still_sends_with_the_previous_version(
    tmp_path, make_runtime, make_settings, smtp_server, caplog
):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday.yaml").write_text(GOOD, encoding="utf-8")
    runtime = make_runtime(
        make_settings(
            CRM_RULES_DIR=str(rules),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    assert len(runtime.catalog) == 1
    (rules / "birthday.yaml").write_text(GOOD + "sned: x\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="worker.rules.catalog"):
        summary = runtime.run_once(parse_instant("2026-03-14T23:30:00Z"))
    assert f"{rules / 'birthday.yaml'}:9:1: unknown key 'sned'" in caplog.text
    assert summary.states.get("sent", 0) == len(smtp_server.received) > 0


def test_check_lists_every_broken_file_with_its_place(tmp_path, redis_client):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "good.yaml").write_text(GOOD, encoding="utf-8")
    (rules / "deep.yaml").write_text(DEEP, encoding="utf-8")
    (rules / "yes.yaml").write_text(
        GOOD.replace("birthday-greeting", "b2") + "enabled: yes\n", encoding="utf-8"
    )
    (rules / "huge.yaml").write_bytes(b"id: x\n#" + b"x" * MAX_RULE_FILE_BYTES + b"\n")
    result = crm_worker(
        "check", env=base_env(tmp_path) | {"CRM_RULES_DIR": str(rules)}, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert any(x.startswith(f"{rules / 'deep.yaml'}:2:{6 + MAX_RULE_DEPTH}: nested") for x in lines)
    assert any(x.startswith(f"{rules / 'yes.yaml'}:9:10: enabled: expected true") for x in lines)
    assert any(x.startswith(f"{rules / 'huge.yaml'}:1:1: file over") for x in lines)
    assert not any(str(rules / "good.yaml") in x for x in lines)
