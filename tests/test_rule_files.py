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


ANNIVERSARY = """\
id: thanks
trigger:
  anniversary:
    field: purchase.purchased_at
    years: [1]
    at: "10:00"
send:
  - channel: email
    template: purchase-anniversary
    to: customer.email
"""
UNRESOLVED = """\
id: complaints
trigger:
  unresolved:
    after: 2d
    every: 3d
    times: 3
send_window: {from: "08:00", to: "20:00"}
send:
  - channel: email
    template: complaint-follow-up
    to: customer.email
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ANNIVERSARY.replace("anniversary:", "aniversary:"),
            "r.yaml:3:3: unknown key 'aniversary'; did you mean 'anniversary'?",
        ),
        (
            ANNIVERSARY.replace("years: [1]", "years: [0]"),
            "r.yaml:5:13: trigger.anniversary.years.0: 0 is too small; write at least 1",
        ),
        (
            ANNIVERSARY.replace("years: [1]", "yeras: [1]"),
            "r.yaml:5:5: unknown key 'yeras'; did you mean 'years'?",
        ),
        (
            ANNIVERSARY.replace("purchase.purchased_at", "purchased_at"),
            "r.yaml:4:12: trigger.anniversary.field: 'purchased_at' is not valid here "
            "(write entity.field, like customer.email)",
        ),
        (
            UNRESOLVED.replace("after: 2d", "after: 2 days"),
            "r.yaml:4:12: trigger.unresolved.after: '2 days' is not a duration; "
            "write e.g. 1d, 36h, 2d 12h or 90m",
        ),
        (
            UNRESOLVED.replace("    every: 3d\n", ""),
            "r.yaml:4:5: trigger.unresolved: times > 1 needs 'every:' (e.g. every: 3d) "
            "between follow-ups",
        ),
        (
            UNRESOLVED.replace("times: 3", "times: three"),
            "r.yaml:6:12: trigger.unresolved.times: expected a whole number, got 'three'",
        ),
        (
            UNRESOLVED.replace('from: "08:00"', "from: 8:00 pm"),
            "r.yaml:7:21: send_window.from: '8:00 pm' is not a time of day",
        ),
        (
            UNRESOLVED.replace('to: "20:00"', 'til: "20:00"'),
            "r.yaml:7:30: unknown key 'til'; allowed here: from, to",
        ),
        (
            UNRESOLVED.replace('to: "20:00"', 'to: "08:00"'),
            "r.yaml:7:14: send_window: 'from' and 'to' are equal",
        ),
        (
            UNRESOLVED + "exempt_from_cap: yes\n",
            "r.yaml:12:18: exempt_from_cap: expected true or false, got 'yes'",
        ),
        (
            UNRESOLVED + "exempt_from_cpa: true\n",
            "r.yaml:12:1: unknown key 'exempt_from_cpa'; did you mean 'exempt_from_cap'?",
        ),
        (
            GOOD.replace("birthday:\n    at:", "after:\n    delay: 7d\n    at:"),
            "r.yaml:4:5: trigger.after.field: required key is missing",
        ),
        (
            GOOD.replace('birthday:\n    at: "09:00"', "event: {type: purchase}"),
            "r.yaml:3:17: trigger.event.type: 'purchase' is not valid here "
            "(write entity.what, like purchase.created)",
        ),
        (
            GOOD.replace("birthday:\n", "birthday:\n    at: '10:00'\n", 1),
            "r.yaml:5:5: duplicate key 'at' (first on line 4)",
        ),
        (
            GOOD.replace(
                '  birthday:\n    at: "09:00"\n',
                "  birthday: {}\n  after: {field: purchase.delivered_at, delay: 7d}\n",
            ),
            "r.yaml:3:3: trigger: name exactly one trigger kind (birthday, anniversary, after, "
            "unresolved, event); found 2",
        ),
    ],
)
def test_new_keys_point_at_their_place(text, expected):
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_the_new_trigger_kinds_load():
    thanks = load_rule_text(ANNIVERSARY, Path("r.yaml"))
    assert thanks.trigger.kind == "anniversary" and thanks.trigger.spec.entity == "purchase"
    follow = load_rule_text(UNRESOLVED, Path("r.yaml"))
    assert follow.trigger.spec.entity == "complaint"
    assert follow.send_window is not None and follow.send_window.start.hour == 8


CHECKED = {
    "fields.yaml": """\
id: fields
trigger:
  anniversary:
    field: purchase.bought_at
when: customer.email_optin and purchase.totl > 100
send:
  - channel: email
    template: purchase-anniversary
    to: manager.email
""",
    "names.yaml": """\
id: names
trigger:
  after: {field: purchase.delivered_at, delay: 7d}
when: vip
send:
  - {channel: email, template: nope, to: customer.emial}
""",
    "resolved.yaml": """\
id: resolved
trigger:
  unresolved: {after: 2d, resolved: complaint.closed_at}
send:
  - {channel: email, template: complaint-follow-up, to: customer.email}
""",
}


def test_check_finds_fields_names_templates_of_related_entities(
    tmp_path, make_runtime, make_settings
):
    from worker.authoring.validation import check_all

    for name, text in CHECKED.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    runtime = make_runtime(make_settings(CRM_RULES_DIR=str(tmp_path)))
    found = [str(p) for p in check_all(runtime.catalog, runtime.renderer, runtime.source)]
    templates = runtime.settings.templates_dir
    assert sorted(found) == sorted(
        [
            f"{tmp_path / 'fields.yaml'}:4:12: trigger.anniversary.field: purchase.bought_at is "
            "not in the purchase data",
            f"{tmp_path / 'fields.yaml'}:5:16: condition uses customer.email_optin, which is not "
            "in the customer data; did you mean 'email_opt_in'?",
            f"{tmp_path / 'fields.yaml'}:5:41: condition uses purchase.totl, which is not in the "
            "purchase data; did you mean 'total'?",
            f"{tmp_path / 'fields.yaml'}:9:9: send[0].to: manager.email is not a field of this "
            "rule's purchase or its customer; write e.g. customer.email",
            f"{tmp_path / 'names.yaml'}:4:7: condition uses unknown name 'vip'; it can use "
            "company, customer, occurrence, purchase",
            f"{tmp_path / 'names.yaml'}:6:42: recipient field customer.emial is not in the "
            "customer data; did you mean 'email'?",
            f"{tmp_path / 'resolved.yaml'}:3:37: trigger.unresolved.resolved: "
            "complaint.closed_at is not in the complaint data",
            f"{tmp_path / 'names.yaml'}:6:32: template 'nope' does not exist in {templates}; there "
            "are: birthday, complaint-alert, complaint-escalation, complaint-follow-up, "
            "delivery-follow-up, purchase-anniversary, purchase-thank-you",
        ]
    )
