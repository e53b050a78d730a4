"""The operator's view of deliveries: report, retry-failed and the suppression list, run as
real `crm-worker` processes against a real SMTP server."""

from __future__ import annotations

import json
import os
from datetime import timedelta

from tests.faultkit import NOW, wait_until, write_crm
from tests.test_cli import crm_worker
from tests.test_faults import settings_env
from worker.localtime import utc_now
from worker.records.ledger import Ledger
from worker.runtime import Runtime
from worker.settings import load_settings


def test_report_retry_failed_and_suppress(tmp_path, smtp_server, redis_client):
    addresses = write_crm(tmp_path / "crm", 3)
    smtp_server.refuse_rcpt[addresses[0]] = "550 5.1.1 <gone>: user unknown"
    smtp_server.data_replies = ["554 5.6.0 Message content rejected"]  # the next DATA only
    env = settings_env(tmp_path, smtp_server)
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    now = NOW.isoformat()

    run = crm_worker("run", "--once", "--now", now, env=env, cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "sent 1, skipped 0, failed 2" in run.stdout

    report = crm_worker("report", "--json", env=env, cwd=tmp_path)
    assert report.returncode == 1  # failures listed
    lines = [json.loads(line) for line in report.stdout.splitlines()]
    counts = {(x["rule"], x["status"]): x["count"] for x in lines if x["kind"] == "count"}
    assert counts == {("birthday-greeting", "sent"): 1, ("birthday-greeting", "failed"): 2}
    failures = {x["recipient"]: x for x in lines if x["kind"] == "failure"}
    assert "5.1.1" in failures[addresses[0]]["reply"]
    assert "suppressed" in failures[addresses[0]]["reason"]
    assert any("5.6.0" in x["reply"] for x in failures.values())

    table = crm_worker(
        "report", "--since", "1d", "--rule", "birthday-greeting", env=env, cwd=tmp_path
    )
    assert "birthday-greeting" in table.stdout and "user unknown" in table.stdout

    listed = crm_worker("suppress", "list", "--json", env=env, cwd=tmp_path)
    (entry,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert entry["address"] == addresses[0] and entry["scope"] == "all"  # a bounce: all mail
    # The CRM's nightly export: only what changed since its last run.
    recent = crm_worker("suppress", "list", "--json", "--since", "1h", env=env, cwd=tmp_path)
    assert [json.loads(x)["address"] for x in recent.stdout.splitlines()] == [addresses[0]]
    later = crm_worker(
        "suppress", "list", "--json", "--since", "2099-01-01T00:00:00Z", env=env, cwd=tmp_path
    )
    assert later.returncode == 0 and later.stdout == ""

    # The operator fixes the content and retries: the suppressed address is skipped, the
    # other is sent; a second retry finds nothing left.
    retry = crm_worker("retry-failed", "--now", now, env=env, cwd=tmp_path)
    assert retry.returncode == 0 and "queued again: 2 deliveries" in retry.stdout
    keys = retry.stdout.split()[-2:]
    worker_side = Runtime(load_settings(env))
    worker = worker_side.start_worker()
    try:
        states = worker_side.wait_for(keys, timeout_s=30)
    finally:
        worker.stop()
        worker_side.close()
    assert sorted(states.values()) == ["sent", "skipped"]
    report = crm_worker("report", "--json", env=env, cwd=tmp_path)
    lines = [json.loads(line) for line in report.stdout.splitlines()]
    counts = {(x["rule"], x["status"]): x["count"] for x in lines if x["kind"] == "count"}
    assert counts == {("birthday-greeting", "sent"): 2, ("birthday-greeting", "skipped"): 1}
    assert report.returncode == 0
    assert len(smtp_server.received) == 2

    removed = crm_worker("suppress", "remove", addresses[0], env=env, cwd=tmp_path)
    assert removed.returncode == 0
    assert crm_worker("suppress", "remove", addresses[0], env=env, cwd=tmp_path).returncode == 1
    added = crm_worker(
        "suppress", "add", "x@example.com", "--reason", "asked", env=env, cwd=tmp_path
    )
    assert added.returncode == 0
    assert "asked" in crm_worker("suppress", "list", env=env, cwd=tmp_path).stdout


def test_resume_ends_a_send_pause(tmp_path, smtp_server, redis_client):
    write_crm(tmp_path / "crm", 1)
    env = settings_env(tmp_path, smtp_server)
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    runtime = Runtime(load_settings(env))
    try:
        runtime.pause.pause(utc_now(), "535 test")
        resumed = crm_worker("resume", env=env, cwd=tmp_path)
        assert resumed.returncode == 0 and "sending resumed" in resumed.stdout
        assert runtime.pause.remaining(utc_now()) is None
    finally:
        runtime.close()


def test_report_and_status_show_stuck_work_until_a_worker_takes_it_over(
    tmp_path, smtp_server, redis_client
):
    write_crm(tmp_path / "crm", 3)
    env = settings_env(tmp_path, smtp_server, CRM_SWEEP_INTERVAL_S="0.2")
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    runtime = Runtime(load_settings(env), redis_client=redis_client)
    try:
        # A scheduler claimed three deliveries long ago and died before queuing them.
        keys = [f"birthday-greeting:customer:{n}:2026/email" for n in (1, 2, 3)]
        lost = Ledger(redis_client, claim_deadline=timedelta(seconds=-60))
        lost.claim_many([(key, "birthday-greeting", NOW) for key in keys], now=NOW)

        report = crm_worker("report", "--json", env=env, cwd=tmp_path)
        assert report.returncode == 1, report.stdout  # stuck work is a problem
        work = {
            x["state"]: x
            for x in map(json.loads, report.stdout.splitlines())
            if x["kind"] == "work"
        }
        assert work["planned"]["count"] == 3 and work["planned"]["stuck"] == 3
        assert work["planned"]["oldest_age_s"] < 60

        status = crm_worker("status", env=env, cwd=tmp_path)
        assert status.returncode == 1
        assert "none alive" in status.stdout and "3 stuck" in status.stdout

        worker = runtime.start_worker()  # its sweeper takes the three over
        try:
            sent = wait_until(
                lambda: set(runtime.ledger.states(keys).values()) == {"sent"}, timeout_s=30
            )
            assert sent
            status = crm_worker("status", env=env, cwd=tmp_path)
            assert status.returncode == 0, status.stdout
            assert "1 alive" in status.stdout and "0 stuck" in status.stdout
        finally:
            worker.stop()
        assert crm_worker("report", env=env, cwd=tmp_path).returncode == 0
    finally:
        runtime.close()
    assert len(smtp_server.received) == 3
