"""Commands refuse what cannot be meant, with exit 2 and one line that says why.

A typo in `--rule` used to select nothing and look like "nothing to do"; a typo in an address
given to `suppress add` sat in the list and protected nobody; `resume` said "resumed" when
nothing was paused.
"""

from __future__ import annotations

import pytest

from tests.test_cli import base_env, crm_worker
from worker.localtime import utc_now
from worker.records.delivery_log import LogEntry


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["retry-failed", "--rule", "nope"],
            "error: unknown rule 'nope'; rules: birthday-greeting",
        ),
        (
            ["retry-failed", "--rule", "birthday-greetin"],
            "error: unknown rule 'birthday-greetin'; did you mean 'birthday-greeting'?",
        ),
        (["report", "--rule", "nope"], "error: unknown rule 'nope'"),
        (
            ["plan", "--customer", "nope", "--explain"],
            "error: customer 'nope' is not in the CRM data",
        ),
        (["plan", "--rule", "birthday-greeting", "--rule", "nope"], "error: unknown rule 'nope'"),
        (
            ["suppress", "add", "not-an-address"],
            "error: 'not-an-address' is not an email address:",
        ),
        (
            ["suppress", "remove", "a@x.com\r\nBcc: b@evil.com"],
            "error: 'a@x.com\\r\\nBcc: b@evil.com' is not an email address: contains",
        ),
        (
            ["event", "purchase.created", "--id", "P1", "--post", "http://x.invalid", "--deliver"],
            "--deliver cannot be used with --post",
        ),
    ],
)
def test_a_command_that_cannot_be_meant_exits_2_with_one_line(tmp_path, redis_client, args, reason):
    result = crm_worker(*args, env=base_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_known_rule_and_a_good_address_still_work(tmp_path, redis_client):
    env = base_env(tmp_path)
    retried = crm_worker("retry-failed", "--rule", "birthday-greeting", env=env, cwd=tmp_path)
    assert (retried.returncode, retried.stdout) == (0, "queued again: 0 deliveries\n")
    added = crm_worker("suppress", "add", "Kim@Example.com", env=env, cwd=tmp_path)
    assert (added.returncode, added.stdout) == (0, "suppressed Kim@Example.com\n")


def test_resume_says_when_nothing_was_paused(tmp_path, make_runtime, make_settings):
    env = base_env(tmp_path)
    idle = crm_worker("resume", env=env, cwd=tmp_path)
    assert (idle.returncode, idle.stdout) == (0, "sending was not paused; nothing to resume\n")
    runtime = make_runtime(make_settings())
    runtime.pause.pause(utc_now(), "535 authentication failed", alert=False)
    paused = crm_worker("resume", env=env, cwd=tmp_path)
    assert (paused.returncode, paused.stdout) == (0, "sending resumed\n")
    assert runtime.pause.remaining(utc_now()) is None


def test_report_of_a_rule_deleted_since_still_shows_its_history(
    tmp_path, make_runtime, make_settings
):
    runtime = make_runtime(make_settings())
    runtime.delivery_log.record(
        LogEntry(at=utc_now(), status="sent", rule="old-rule", key="old-rule:customer:1:2025/email")
    )
    result = crm_worker(
        "report", "--rule", "old-rule", "--json", env=base_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert '"rule": "old-rule", "status": "sent", "count": 1' in result.stdout
