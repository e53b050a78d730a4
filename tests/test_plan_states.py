"""`plan` and `preview` say where each message stands: new, queued, already sent on …, failed,
and whether its address is suppressed. `plan` leaves out what the ledger is done with unless
`--all`, so that a dry run after a pass lists only what a pass would still send."""

from __future__ import annotations

import json

from tests.conftest import REPO
from tests.test_cli import base_env, crm_worker

NOW = "2026-03-14T10:00:00Z"


def birthday_only(tmp_path, smtp_server):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday-greeting.yaml").write_text(
        (REPO / "rules" / "birthday-greeting.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return base_env(tmp_path) | {
        "CRM_RULES_DIR": str(rules),
        "CRM_SMTP_HOST": smtp_server.host,
        "CRM_SMTP_PORT": str(smtp_server.port),
        "CRM_SMTP_SECURITY": "none",
    }


def plan_json(env, cwd, *args):
    result = crm_worker("plan", "--now", NOW, "--json", *args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_plan_leaves_out_what_was_sent_unless_all(tmp_path, smtp_server, redis_client):
    env = birthday_only(tmp_path, smtp_server)
    before, _ = plan_json(env, tmp_path)
    assert before and {line["state"] for line in before} == {"new"}
    assert all(line["suppressed"] is None for line in before)

    suppressed = before[0]["to"]
    added = crm_worker(
        "suppress", "add", suppressed, "--reason", "asked by phone", env=env, cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    flagged, _ = plan_json(env, tmp_path)
    assert [line["suppressed"] for line in flagged if line["to"] == suppressed] == [
        "asked by phone"
    ]

    ran = crm_worker("run", "--once", "--now", NOW, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    after, note = plan_json(env, tmp_path)
    assert after == []
    assert f"{len(before)} message(s) already sent, skipped or failed not shown (use --all)" in note

    everything, _ = plan_json(env, tmp_path, "--all")
    states = {line["to"]: line for line in everything}
    assert {line["state"] for line in everything} == {"sent", "skipped"}
    assert states[suppressed]["state"] == "skipped"
    assert states[suppressed]["suppressed"] == "asked by phone"
    sent = next(line for line in everything if line["state"] == "sent")
    assert sent["state_at"].endswith("Z")

    table = crm_worker("plan", "--now", NOW, "--all", env=env, cwd=tmp_path)
    assert "already sent on" in table.stdout and "address suppressed" in table.stdout


def test_preview_says_a_message_was_already_sent(tmp_path, smtp_server, redis_client):
    env = birthday_only(tmp_path, smtp_server)
    planned, _ = plan_json(env, tmp_path)
    customer = planned[0]["record_id"]
    first = crm_worker(
        "preview", "birthday-greeting", "--customer", customer, "--now", NOW, env=env, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert "ledger: new" in first.stdout
    crm_worker("run", "--once", "--now", NOW, env=env, cwd=tmp_path)
    again = crm_worker(
        "preview", "birthday-greeting", "--customer", customer, "--now", NOW, env=env, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "ledger: already sent on 20" in again.stdout


def test_plan_all_with_customer_is_contradictory(tmp_path, redis_client):
    result = crm_worker("plan", "--customer", "1", "--all", env=base_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "error: --all lists a whole plan; --customer already shows every rule" in result.stderr


def test_explain_says_an_address_is_suppressed(tmp_path, smtp_server, redis_client):
    env = birthday_only(tmp_path, smtp_server)
    planned, _ = plan_json(env, tmp_path)
    customer, address = planned[0]["record_id"], planned[0]["to"]
    crm_worker("suppress", "add", address, "--reason", "asked by phone", env=env, cwd=tmp_path)
    result = crm_worker(
        "plan", "--now", NOW, "--customer", customer, "--explain", "--json", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(v["verdict"], v["reason"]) for v in verdicts] == [
        ("skipped", "address suppressed: asked by phone")
    ]
