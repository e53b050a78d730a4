"""The rule language end to end: rule files and CRM data written here, exact plans, exact
check errors, and the complaint follow-up through a real SMTP server."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import REPO
from tests.test_cli import base_env, crm_worker
from worker.authoring.validation import check_all
from worker.localtime import parse_instant
from worker.planning.events import EventLog, record_event
from worker.planning.plan import PlannedDelivery, plan

#: 23:30 UTC: already Mar 14 in Auckland, still Mar 13 in Los Angeles.
NOW = "2026-03-13T23:30:00Z"

CUSTOMERS = [
    # id, email, first_name, last_name, birthday, locale, timezone, manager, opt-in
    ("1", "ana@example.com", "Ana", "Ruiz", "1990-03-14", "en", "Pacific/Auckland",
     "m1@example.com", "true"),
    ("2", "bob@example.com", "Bob", "", "1985-03-13", "de", "America/Los_Angeles",
     "m2@example.com", "true"),
    ("3", "cy@example.com", "Cy", "Lee", "1970-03-13", "es", "Europe/Berlin",
     "m1@example.com", "false"),
]  # fmt: skip
PURCHASES = [
    # purchased 09:00 NZDT on Mar 14 2025 (UTC: Mar 13); delivered Mar 7 11:00 NZDT
    ("P1", "1", "Road bike", "2025-03-13T20:00:00Z", "2026-03-06T22:00:00Z"),
    ("P2", "3", "Yoga mat", "2025-03-13T09:00:00Z", "2026-03-06T09:00:00Z"),
    ("P3", "2", "Lamp", "2024-02-29T18:00:00Z", "0000-00-00"),
]
COMPLAINTS = [
    ("C1", "2", "Late delivery", "2026-03-11T23:30:00Z", ""),  # open: 1st follow-up due now
    ("C2", "1", "Wrong size", "2026-03-11T23:00:00Z", "2026-03-12T10:00:00Z"),  # resolved
]

RULES = {
    "birthday.yaml": """\
id: birthday
trigger: {birthday: {at: "09:00"}}
when: customer.email_opt_in
send: [{channel: email, template: birthday, to: customer.email}]
""",
    "anniversary.yaml": """\
id: anniversary
trigger:
  anniversary: {field: purchase.purchased_at, years: [1], at: "10:00"}
when: customer.email_opt_in
send: [{channel: email, template: purchase-anniversary, to: customer.email}]
""",
    "delivered.yaml": """\
id: delivered
trigger:
  after: {field: purchase.delivered_at, delay: 7d, at: "10:00"}
when: customer.email_opt_in
send_window: {from: "08:00", to: "20:00"}
send: [{channel: email, template: delivery-follow-up, to: customer.email}]
""",
    "complaint.yaml": """\
id: complaint
trigger:
  unresolved: {after: 2d, every: 3d, times: 3}
exempt_from_cap: true
send:
  - {id: customer, channel: email, template: complaint-follow-up, to: customer.email}
  - {id: escalation, channel: email, template: complaint-escalation,
     to: customer.account_manager_email}
""",
    "welcome.yaml": """\
id: welcome
trigger: {event: {type: purchase.created}}
send: [{channel: email, template: delivery-follow-up, to: customer.email}]
""",
}


def write_csv(path: Path, header: str, rows) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)


@pytest.fixture
def world(tmp_path):
    """A CRM folder and a rules folder written by the test."""
    crm = tmp_path / "crm"
    crm.mkdir()
    write_csv(
        crm / "customers.csv",
        "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,email_opt_in",
        CUSTOMERS,
    )
    write_csv(crm / "purchases.csv", "id,customer_id,product,purchased_at,delivered_at", PURCHASES)
    write_csv(crm / "complaints.csv", "id,customer_id,subject,opened_at,resolved_at", COMPLAINTS)
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text, encoding="utf-8")
    return crm, rules


ZONES = {"1": "Pacific/Auckland", "2": "America/Los_Angeles", "3": "Europe/Berlin"}


def line(rule, key, to, due, template, locale, entity, record_id, customer, channel="email"):
    zone = ZONES[customer]
    return {
        "rule": rule,
        "key": key,
        "channel": channel,
        "to": to,
        "due_at": due,
        # When it goes out on the customer's own clock.
        "due_local": parse_instant(due).astimezone(ZoneInfo(zone)).isoformat(),
        "timezone": zone,
        "template": template,
        "locale": locale,
        "entity": entity,
        "record_id": record_id,
        # Nothing is in the ledger yet: every message is new, no address suppressed.
        "state": "new",
        "state_at": None,
        "state_reason": None,
        "suppressed": None,
    }


def test_plan_json_lines_at_23_30_utc(world, tmp_path, redis_client):
    crm, rules = world
    env = base_env(tmp_path) | {"CRM_SOURCE": str(crm), "CRM_RULES_DIR": str(rules)}
    result = crm_worker("plan", "--now", NOW, "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(x) for x in result.stdout.splitlines()] == [
        # Anniversary and delivery: on Ana's calendar in Auckland, 10:00 NZDT = 21:00 UTC.
        line("anniversary", "anniversary:purchase:P1:1/email", "ana@example.com",
             "2026-03-13T21:00:00Z", "purchase-anniversary", "en", "purchase", "P1", "1"),
        # Birthdays: Ana (Mar 14 09:00 NZDT) and Bob (Mar 13 09:00 PDT); Cy opted out.
        line("birthday", "birthday:customer:1:2026/email", "ana@example.com",
             "2026-03-13T20:00:00Z", "birthday", "en", "customer", "1", "1"),
        line("birthday", "birthday:customer:2:2026/email", "bob@example.com",
             "2026-03-13T16:00:00Z", "birthday", "de", "customer", "2", "2"),
        # Bob's open complaint: a note to him in his language, and an alert to his account
        # manager in the internal language (CRM_DEFAULT_LOCALE here).
        line("complaint", "complaint:complaint:C1:1/customer", "bob@example.com",
             "2026-03-13T23:30:00Z", "complaint-follow-up", "de", "complaint", "C1", "2"),
        line("complaint", "complaint:complaint:C1:1/escalation", "m2@example.com",
             "2026-03-13T23:30:00Z", "complaint-escalation", "en", "complaint", "C1", "2"),
        line("delivered", "delivered:purchase:P1:once/email", "ana@example.com",
             "2026-03-13T21:00:00Z", "delivery-follow-up", "en", "purchase", "P1", "1"),
    ]  # fmt: skip


def test_plan_explains_every_rule_for_a_customer(world, make_runtime, make_settings):
    crm, rules = world
    runtime = make_runtime(
        make_settings(CRM_SOURCE=str(crm), CRM_RULES_DIR=str(rules), CRM_CONTACT_CAP="1/7d")
    )
    explainer = runtime.explainer
    now = parse_instant(NOW)

    def verdicts(customer_id):
        return {
            (e.rule_id, e.subject): (e.verdict, e.reason)
            for e in explainer.explain(customer_id, now)
        }

    cy = verdicts("3")
    assert cy[("birthday", "customer 3")] == (
        "skipped",
        "opted out (email_opt_in is false); condition is false: customer.email_opt_in",
    )
    assert cy[("delivered", "purchase P2")][0] == "skipped"  # due 10:00 CET, but opted out
    assert cy[("complaint", "customer 3")] == ("not due", "the customer has no complaint records")

    ana = verdicts("1")
    assert ana[("complaint", "complaint C2")] == (
        "no data",
        "complaint C2 was resolved at 2026-03-12T10:00:00+00:00",
    )
    assert verdicts("2")[("delivered", "purchase P3")][0] == "no data"  # 0000-00-00
    assert ana[("welcome", "customer 1")] == (
        "not due",
        "no purchase.created event for this customer within 1d",
    )
    bob = verdicts("2")
    assert bob[("anniversary", "purchase P3")] == (
        "not due",
        "not the date: was due 2025-02-28 10:00 America/Los_Angeles (18:00 UTC), longer ago "
        "than 1d",
    )
    assert bob[("delivered", "purchase P3")] == (
        "no data",
        "delivered_at '0000-00-00' is not usable (year 0 is out of range)",
    )
    assert ana[("birthday", "customer 1")][0] == "due"
    # A pass claims; the explanation then says why nothing more goes out. Nothing is claimed
    # by the explanation itself.
    assert runtime.ledger.get("birthday:customer:1:2026/email") == {}
    runtime.scheduler.run_pass(now)
    ana = verdicts("1")
    assert ana[("birthday", "customer 1")][0] == "already"
    # Cap 1 per 7 days: Ana got one of her three messages, the others were capped.
    capped = [v for k, v in ana.items() if v[0] == "already" and "contact cap" in v[1]]
    assert len(capped) == 2


def test_contact_cap_records_the_skip_and_spares_exempt_rules(world, make_runtime, make_settings):
    crm, rules = world
    runtime = make_runtime(
        make_settings(CRM_SOURCE=str(crm), CRM_RULES_DIR=str(rules), CRM_CONTACT_CAP="1/7d")
    )
    now = parse_instant(NOW)
    report = runtime.scheduler.run_pass(now)
    ana_keys = [
        "anniversary:purchase:P1:1/email",
        "birthday:customer:1:2026/email",
        "delivered:purchase:P1:once/email",
    ]
    states = runtime.ledger.states(ana_keys)
    assert sorted(states.values()) == ["queued", "skipped", "skipped"]
    for key, state in states.items():
        if state == "skipped":
            assert runtime.ledger.get(key)["reason"].startswith("contact cap reached: 1 per")
    logged = {e.key: e for e in runtime.delivery_log.read() if e.status == "skipped"}
    assert {k for k, s in states.items() if s == "skipped"} <= set(logged)
    assert all(e.reason.startswith("contact cap reached") for e in logged.values())
    # Bob: a birthday (counted) plus the exempt complaint follow-up: nothing capped.
    assert {
        "birthday:customer:2:2026/email",
        "complaint:complaint:C1:1/customer",
        "complaint:complaint:C1:1/escalation",
    } <= set(report.queued)
    # Capped deliveries are never planned again: the next pass finds them handled.
    again = runtime.scheduler.run_pass(now)
    assert again.queued == []


def test_event_rule_sends_once_per_event(world, make_runtime, make_settings, smtp_server):
    crm, rules = world
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_RULES_DIR=str(rules),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    at = parse_instant("2026-03-14T10:00:00Z")
    first = record_event(runtime.redis, "purchase.created", "P1", event_id="crm-1", at=at)
    again = record_event(runtime.redis, "purchase.created", "P1", event_id="crm-1", data={"x": 1})
    assert again == first  # a retried call keeps the first version
    stored = EventLog(runtime.redis).between("purchase.created", at - timedelta(hours=1), at)
    assert [e.id for e in stored] == ["crm-1"]
    worker = runtime.start_worker()
    try:
        report = runtime.scheduler.run_pass(at, rule_ids=frozenset({"welcome"}))
        states = runtime.wait_for(report.queued, timeout_s=30)
        assert states == {"welcome:purchase:P1:crm-1/email": "sent"}
        assert runtime.scheduler.run_pass(at, rule_ids=frozenset({"welcome"})).already_claimed == 1
    finally:
        worker.stop()
    assert [r.recipients for r in smtp_server.received] == [["ana@example.com"]]


def test_complaint_follow_up_reaches_customer_and_account_manager(
    world, make_runtime, make_settings, smtp_server
):
    crm, rules = world
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_RULES_DIR=str(rules),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    summary = runtime.run_once(parse_instant(NOW))
    assert summary.states["failed"] == 0
    by_recipient = {r.recipients[0]: r.message for r in smtp_server.received}
    customer_mail = by_recipient["bob@example.com"]
    alert = by_recipient["m2@example.com"]
    assert "Late delivery" in customer_mail["Subject"] or "Late delivery" in alert["Subject"]
    # Bob reads German; his account manager reads the internal language (README, "Dates and
    # time zones": a message is written for its reader).
    assert alert["Subject"].startswith("Complaint C1 still open (follow-up 1)")
    assert alert["List-Unsubscribe"] is None  # an internal alert is no subscription
    assert alert["To"] == "m2@example.com"  # not addressed by the customer's name
    follow_ups = [
        r.message for r in smtp_server.received if "Anliegen" in str(r.message["Subject"])
    ]
    assert [m["To"] for m in follow_ups] == ["Bob <bob@example.com>"]
    assert follow_ups[0]["List-Unsubscribe"] is not None


def test_complaint_resolved_after_enqueue_is_skipped_at_send_time(
    world, make_runtime, make_settings, smtp_server
):
    crm, rules = world
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_RULES_DIR=str(rules),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    report = runtime.scheduler.run_pass(parse_instant(NOW))
    keys = ["complaint:complaint:C1:1/customer", "complaint:complaint:C1:1/escalation"]
    assert set(keys) <= set(report.queued)
    # The complaint is resolved in the CRM before any worker picks the messages up.
    text = (crm / "complaints.csv").read_text(encoding="utf-8")
    # (Resolved at the pass instant: a replayed pass judges "resolved by now" at that instant.)
    resolved = text.replace("2026-03-11T23:30:00Z,", "2026-03-11T23:30:00Z,2026-03-13T23:30:00Z")
    (crm / "complaints.csv").write_text(resolved, encoding="utf-8")
    worker = runtime.start_worker()
    try:
        states = runtime.wait_for(report.queued, timeout_s=30)
    finally:
        worker.stop()
    for key in keys:
        assert states[key] == "skipped"
        assert runtime.ledger.get(key)["reason"].startswith("complaint C1 was resolved at")
    assert not [r for r in smtp_server.received if r.recipients == ["m2@example.com"]]


def test_shipped_rules_check_clean(make_runtime, make_settings):
    runtime = make_runtime(make_settings())
    assert check_all(runtime.catalog, runtime.renderer, runtime.source) == []
    ids = {rule.id for rule in runtime.catalog}
    assert ids == {
        "birthday-greeting",
        "purchase-anniversary",
        "delivery-follow-up",
        "complaint-follow-up",
        "complaint-sales-chat",  # shipped switched off: it waits for a chat webhook
        "purchase-thank-you",
    }
    for path in (REPO / "rules").glob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../var/rule.schema.json", path


def test_demo_data_gives_every_sample_rule_work(make_runtime, make_settings):
    runtime = make_runtime(make_settings())
    seen: dict[str, int] = {}
    for day in ("2025-06-03", "2025-09-17", "2026-01-22", "2026-03-14", "2026-07-08"):
        items = plan(
            runtime.catalog,
            runtime.source,
            parse_instant(f"{day}T23:59:00Z"),
            default_zone=runtime.default_zone,
            company=runtime.settings.company,
        )
        for item in items:
            if isinstance(item, PlannedDelivery):
                seen[item.rule_id] = seen.get(item.rule_id, 0) + 1
    # Event rules get their work from CRM events, not from dates (tests/test_readme_intake.py).
    dated = {r.id for r in runtime.catalog if r.enabled and r.trigger.kind != "event"}
    assert set(seen) == dated, seen


def test_event_command_queues_and_delivers_once(world, tmp_path, smtp_server, redis_client):
    crm, rules = world
    env = base_env(tmp_path) | {
        "CRM_SOURCE": str(crm),
        "CRM_RULES_DIR": str(rules),
        "CRM_SMTP_HOST": smtp_server.host,
        "CRM_SMTP_PORT": str(smtp_server.port),
        "CRM_SMTP_SECURITY": "none",
    }
    args = ["event", "purchase.created", "--id", "P1", "--event-id", "crm-9"]
    args += ["--at", "2026-03-14T10:00:00Z", "--data", '{"via": "web"}', "--deliver"]
    first = crm_worker(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "recorded event crm-9: purchase.created P1",
        "queued 1 message(s)",
        "sent 1, skipped 0, failed 0",
    ]
    again = crm_worker(*args, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "queued 0 message(s)" in again.stdout
    assert [r.recipients for r in smtp_server.received] == [["ana@example.com"]]
    bad = crm_worker(
        "event", "purchase.created", "--id", "P1", "--data", "[1]", env=env, cwd=tmp_path
    )
    assert bad.returncode == 2 and "--data must be a JSON object" in bad.stderr
    bad_id = crm_worker("event", "purchase.created", "--id", "P1:x", env=env, cwd=tmp_path)
    assert bad_id.returncode == 2 and "record id 'P1:x' is not usable" in bad_id.stderr


def test_schema_describes_every_trigger_kind_and_the_send_window():
    from worker.rules.loader import rule_json_schema

    schema = rule_json_schema()
    trigger = schema["$defs"]["Trigger"]["properties"]
    assert set(trigger) == {"birthday", "anniversary", "after", "unresolved", "event"}
    assert set(schema["$defs"]["SendWindow"]["properties"]) == {"from", "to"}
    assert "exempt_from_cap" in schema["properties"]


def test_broken_edit_of_a_new_kind_keeps_the_last_valid_version(tmp_path):
    from worker.rules import RuleCatalog

    path = tmp_path / "complaint.yaml"
    path.write_text(RULES["complaint.yaml"], encoding="utf-8")
    catalog = RuleCatalog(tmp_path)
    assert catalog.refresh() == []
    path.write_text(RULES["complaint.yaml"].replace("every: 3d", "evry: 3d"), encoding="utf-8")
    found = [str(p) for p in catalog.refresh()]
    assert found == [f"{path}:3:27: unknown key 'evry'; did you mean 'every'?"]
    rule = catalog.get("complaint")
    assert rule is not None and rule.trigger.kind == "unresolved"


def test_plan_customer_explain_json_claims_nothing(world, tmp_path, redis_client):
    crm, rules = world
    env = base_env(tmp_path) | {"CRM_SOURCE": str(crm), "CRM_RULES_DIR": str(rules)}
    args = ["plan", "--now", NOW, "--customer", "3", "--explain", "--json", "--rule", "birthday"]
    result = crm_worker(*args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(x) for x in result.stdout.splitlines()] == [
        {
            "rule_id": "birthday",
            "subject": "customer 3",
            "verdict": "skipped",
            "reason": "opted out (email_opt_in is false); "
            "condition is false: customer.email_opt_in",
            "key": "birthday:customer:3:2026/email",
            "to": "",
        }
    ]
    assert redis_client.keys("crm:delivery:*") == []


def test_condition_over_the_record_and_its_customer(world, make_runtime, make_settings):
    crm, rules = world
    (crm / "purchases.csv").write_text(
        "id,customer_id,product,total,purchased_at,delivered_at\n"
        "P1,1,Road bike,900.00,2025-03-13T20:00:00Z,\n"
        "P4,1,Socks,9.90,2025-03-13T20:00:00Z,\n"
        "P5,1,Lamp,lots,2025-03-13T20:00:00Z,\n",
        encoding="utf-8",
    )
    (rules / "anniversary.yaml").write_text(
        RULES["anniversary.yaml"].replace(
            "when: customer.email_opt_in", "when: customer.email_opt_in and purchase.total > 100"
        ),
        encoding="utf-8",
    )
    runtime = make_runtime(make_settings(CRM_SOURCE=str(crm), CRM_RULES_DIR=str(rules)))
    items = plan(
        runtime.catalog,
        runtime.source,
        parse_instant(NOW),
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
        rule_ids=frozenset({"anniversary"}),
    )
    outcome = {item.key: getattr(item, "reason", "due") for item in items}
    assert outcome == {
        "anniversary:purchase:P1:1/email": "due",
        "anniversary:purchase:P4:1/email": "condition is false: "
        "customer.email_opt_in and purchase.total > 100",
        "anniversary:purchase:P5:1/email": "condition 'customer.email_opt_in and "
        "purchase.total > 100': TypeError: '>' not supported between instances of "
        "'NoneType' and 'int'",
    }
