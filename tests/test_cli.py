"""The command line as an operator uses it: a real `crm-worker` process, a real SMTP server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import REPO
from worker.cli.deliveries import _status_lines
from worker.constants import SCHEDULER_LOCK_KEY
from worker.planning.scheduler import LeaderLock, PassReport, record_pass
from worker.records.heartbeats import process_name
from worker.records.status import read_status

NOW = "2026-03-14T10:00:00Z"


def crm_worker(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | env
    return subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        "CRM_DATA_DIR": str(tmp_path / "var"),
        "CRM_SOURCE": str(REPO / "examples" / "crm"),
        "CRM_RULES_DIR": str(REPO / "rules"),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
    }
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    return env


def test_check_plan_run_run_again(tmp_path, smtp_server, redis_client):
    env = base_env(tmp_path) | {
        "CRM_SMTP_HOST": smtp_server.host,
        "CRM_SMTP_PORT": str(smtp_server.port),
        "CRM_SMTP_SECURITY": "none",
    }
    checked = crm_worker("check", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    planned = crm_worker("plan", "--now", NOW, "--json", env=env, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    lines = [json.loads(line) for line in planned.stdout.splitlines()]
    assert len(lines) > 0
    assert {"rule", "key", "channel", "to", "due_at"} <= set(lines[0])
    assert all(line["due_at"].endswith("Z") for line in lines)

    first = crm_worker("run", "--once", "--now", NOW, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"sent {len(lines)}," in first.stdout
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(x["to"] for x in lines)

    assert (
        " INFO worker.planning.scheduler: pass at " in first.stderr
    )  # state changes logged at INFO
    status = crm_worker("status", env=env, cwd=tmp_path)
    assert "Last pass  none recorded" not in status.stdout, status.stdout
    assert f"{len(lines)} queued, 0 already claimed" in status.stdout  # run --once's pass
    assert " ago by run --once " in status.stdout, status.stdout
    assert "Scheduler  no leader" in status.stdout, status.stdout  # a pass does not lead

    second = crm_worker("-q", "run", "--once", "--now", NOW, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "sent 0," in second.stdout
    assert len(smtp_server.received) == len(lines)
    assert " INFO " not in second.stderr  # -q: warnings and errors only


def test_status_names_the_scheduler_holding_the_lock_and_who_ran_the_last_pass(
    redis_client,
) -> None:
    # A run --once beside a running scheduler records its pass; the leader is still the
    # scheduler holding the lock (named by the lock's value), not whoever passed last.
    lock = LeaderLock(redis_client)
    assert lock.acquire()
    report = PassReport(now=datetime(2026, 6, 15, tzinfo=UTC), queued=["a", "b"])
    record_pass(redis_client, report, by="run --once other-host:42", took_s=0.5)
    state = read_status(redis_client, queue_name="crm-messages", sweep_interval_s=1)
    assert state.leader == process_name()
    lines = _status_lines(state, "redis", crm_events=False)
    assert any(line.startswith(f"Scheduler  leader {process_name()} (lock for ") for line in lines)
    assert any(
        line.startswith("Last pass  ")
        and " ago by run --once other-host:42, took 0.50 s: 2 queued" in line
        for line in lines
    ), lines
    lock.release()
    redis_client.set(SCHEDULER_LOCK_KEY, "0123abcd", px=60_000)  # as earlier versions wrote it
    state = read_status(redis_client, queue_name="crm-messages", sweep_interval_s=1)
    assert state.leader is None
    assert any(
        line.startswith("Scheduler  leader (unnamed) (lock for ")
        for line in _status_lines(state, "redis", crm_events=False)
    )


def test_check_reports_problems_with_positions(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text(
        "id: bad\ntrigger:\n  birthday:\n    at: '9:75'\nsend:\n"
        "  - {channel: email, template: nope, to: customer.email}\n",
        encoding="utf-8",
    )
    env = base_env(tmp_path) | {"CRM_RULES_DIR": str(rules)}
    result = crm_worker("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        f"{rules / 'bad.yaml'}:4:9: trigger.birthday.at: '9:75' is not a time of day"
        in result.stdout
    )


def test_unknown_setting_is_a_usage_error(tmp_path):
    result = crm_worker("check", env=base_env(tmp_path) | {"CRM_SMTP_HOTS": "x"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean CRM_SMTP_HOST" in result.stderr


def test_every_command_says_redis_is_unavailable_with_exit_3(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = base_env(tmp_path) | {"CRM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    for args in (
        ["run", "--once", "--now", NOW],
        ["report"],
        ["retry-failed"],
        ["suppress", "list"],
        ["resume"],
        ["event", "purchase.created", "--id", "P1"],
    ):
        result = crm_worker(*args, env=env, cwd=tmp_path)
        assert result.returncode == 3, (args, result.stderr)
        assert "Redis unavailable" in result.stderr, args
        assert "Traceback" not in result.stderr, args
