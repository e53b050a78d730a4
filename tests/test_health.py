"""``crm-worker health scheduler|worker|intake`` against real processes: exit 0 while a process
of that role on this host writes its heartbeat, 1 with one line saying why when none does, when
it died, when it stopped, or when Redis cannot be reached."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, redis_url
from tests.faultkit import crm_worker as start
from tests.faultkit import free_port, wait_until, worker_env, write_crm
from tests.test_cli import crm_worker as run
from tests.test_healing import RULE
from worker.constants import HEARTBEAT_INTERVAL, SCHEDULER_LAST_PASS_KEY
from worker.localtime import utc_now


@pytest.fixture
def env(tmp_path: Path, redis_client: redis.Redis) -> dict[str, str]:
    return worker_env(
        {
            "CRM_REDIS_URL": redis_url(redis_client),
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(REPO / "examples" / "crm"),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_SWEEP_INTERVAL_S": "0.5",  # a worker's heartbeat is stale after 1.5 s
            "CRM_SCHEDULER_INTERVAL_S": "3600",
        }
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def healthy(role: str, env: dict[str, str], cwd: Path, *args: str) -> bool:
    return run("health", role, *args, env=env, cwd=cwd).returncode == 0


def test_no_process_of_a_role_is_unhealthy_with_the_reason(tmp_path: Path, env) -> None:
    host = socket.gethostname()
    for role in ("scheduler", "worker", "intake"):
        answer = run("health", role, env=env, cwd=tmp_path)
        assert answer.returncode == 1
        assert answer.stdout.strip() == (
            f"unhealthy: no {role} on {host} has ever written a heartbeat"
        )


def test_a_worker_is_healthy_while_it_runs_and_unhealthy_once_killed(
    tmp_path: Path, env, processes
) -> None:
    worker = start("worker", "--processes", "1", env=env, cwd=tmp_path)
    processes.append(worker)
    assert wait_until(lambda: healthy("worker", env, tmp_path), timeout_s=30)
    answer = run("health", "worker", env=env, cwd=tmp_path)
    assert answer.stdout.startswith(f"healthy: worker {socket.gethostname()}:")

    # SIGKILL the supervisor and its child: nobody removes the heartbeat, it goes stale.
    for pid in _children(worker.pid):
        _kill(pid)
    worker.kill()
    worker.wait()
    assert wait_until(lambda: not healthy("worker", env, tmp_path), timeout_s=15)
    answer = run("health", "worker", env=env, cwd=tmp_path)
    assert answer.returncode == 1
    assert "no worker on" in answer.stdout and "beat in the last 2 s" in answer.stdout
    # Another host's heartbeats do not make this one healthy, and --any-host sees them.
    assert not healthy("worker", env, tmp_path, "--host", "elsewhere")


def test_the_scheduler_is_healthy_while_it_runs_and_unhealthy_after_sigterm(
    tmp_path: Path, env, processes, redis_client: redis.Redis
) -> None:
    scheduler = start("scheduler", env=env, cwd=tmp_path)
    processes.append(scheduler)
    assert wait_until(lambda: healthy("scheduler", env, tmp_path), timeout_s=30)
    assert healthy("scheduler", env, tmp_path, "--any-host")
    # A standby beats too: it is healthy, waiting for the lock.
    standby = start("scheduler", env=env, cwd=tmp_path)
    processes.append(standby)
    assert wait_until(lambda: redis_client.zcard("crm:schedulers") == 2, timeout_s=30)
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=30) == 0
    assert healthy("scheduler", env, tmp_path)
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=30) == 0
    answer = run("health", "scheduler", env=env, cwd=tmp_path)
    assert answer.returncode == 1, answer.stdout  # a clean stop removes its heartbeat at once


def test_the_intake_is_healthy_while_it_serves(tmp_path: Path, env, processes) -> None:
    port = free_port()
    intake_env = env | {"CRM_INTAKE_TOKEN": "t" * 32}
    intake = start("intake", "--port", str(port), env=intake_env, cwd=tmp_path)
    processes.append(intake)
    assert wait_until(lambda: healthy("intake", env, tmp_path), timeout_s=30)
    intake.send_signal(signal.SIGTERM)
    assert intake.wait(timeout=30) == 0
    assert not healthy("intake", env, tmp_path)


def test_an_unreachable_redis_is_unhealthy_with_exit_1(tmp_path: Path, env) -> None:
    answer = run(
        "health",
        "worker",
        env=env | {"CRM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        cwd=tmp_path,
    )
    assert answer.returncode == 1
    assert answer.stdout.startswith("unhealthy: Redis unreachable: ")
    assert len(answer.stdout.strip().splitlines()) == 1


def test_host_and_any_host_together_are_a_usage_error(tmp_path: Path, env) -> None:
    answer = run("health", "worker", "--host", "a", "--any-host", env=env, cwd=tmp_path)
    assert answer.returncode == 2
    assert "contradict" in answer.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text(encoding="ascii").split()]
        except OSError:
            continue
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_asking_about_the_embedded_redis_does_not_start_it(tmp_path: Path, env) -> None:
    embedded = {k: v for k, v in env.items() if k != "CRM_REDIS_URL"}
    answer = run("health", "worker", env=embedded, cwd=tmp_path)
    assert answer.returncode == 1
    assert answer.stdout.strip() == (
        f"unhealthy: the embedded Redis of {tmp_path / 'var'} is not running"
    )
    assert not (tmp_path / "var" / "redis.db").exists()


def test_the_scheduler_beats_before_and_during_a_long_pass(
    tmp_path: Path, env, processes, redis_client: redis.Redis
) -> None:
    # 60,000 greetings due: the first pass takes several heartbeat intervals (about 10 s on
    # 2 busy cores), longer than the wait below lets it.
    write_crm(tmp_path / "crm", 60_000, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    env = env | {"CRM_SOURCE": str(tmp_path / "crm"), "CRM_RULES_DIR": str(tmp_path / "rules")}
    scheduler = start("scheduler", env=env, cwd=tmp_path)
    processes.append(scheduler)

    def beat() -> float | None:
        found = redis_client.zrange("crm:schedulers", 0, -1, withscores=True)
        return float(found[0][1]) if found else None

    # A heartbeat before the first pass ended (nothing recorded yet) …
    assert wait_until(lambda: beat() is not None, timeout_s=60, poll_s=0.005)
    first = beat()
    assert first is not None
    assert not redis_client.exists(SCHEDULER_LAST_PASS_KEY)
    assert healthy("scheduler", env, tmp_path)
    # … and another while it still runs.
    assert wait_until(
        lambda: (beat() or 0) > first, timeout_s=HEARTBEAT_INTERVAL.total_seconds() + 2
    )
    assert not redis_client.exists(SCHEDULER_LAST_PASS_KEY), "the pass was too short to tell"
    assert wait_until(lambda: redis_client.exists(SCHEDULER_LAST_PASS_KEY), timeout_s=120)
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=30) == 0
