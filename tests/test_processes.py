"""Supervised worker processes, done to real processes: ``crm-worker worker --processes 2``
delivering to the test SMTP server while one of its children is SIGKILLed (restarted, every
message arrives, duplicates at most one per SMTP connection of the killed child), SIGTERM
stopping them all within a bound, a crash loop that backs off, and the CPU count a container
allows."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, SmtpSink
from tests.faultkit import crm_worker, wait_until, worker_env, write_crm
from tests.test_healing import RULE
from worker.constants import SCHEDULER_LAST_PASS_KEY
from worker.localtime import utc_now
from worker.processes import (
    ChildSpec,
    Supervisor,
    cgroup_cpu_quota,
    restart_delay_s,
    usable_cpus,
)
from worker.runtime import Runtime
from worker.settings import load_settings

TOTAL = 600
CONNECTIONS = 4


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux's /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # each thread's children are listed apart
        try:
            found += [int(p) for p in (task / "children").read_text(encoding="ascii").split()]
        except OSError:
            continue
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v2_or_v1_files(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="ascii")
    assert cgroup_cpu_quota(tmp_path, tmp_path / "no-such-file") == quota


def test_the_quota_of_the_process_own_cgroup_and_those_above_it_counts(tmp_path: Path) -> None:
    membership = tmp_path / "cgroup"
    membership.write_text("0::/system.slice/crm.service\n", encoding="ascii")
    root = tmp_path / "fs"
    unit = root / "system.slice" / "crm.service"
    unit.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n", encoding="ascii")
    (unit / "cpu.max").write_text("250000 100000\n", encoding="ascii")  # systemd CPUQuota=250%
    assert cgroup_cpu_quota(root, membership) == 2.5
    (root / "system.slice" / "cpu.max").write_text("100000 100000\n", encoding="ascii")
    assert cgroup_cpu_quota(root, membership) == 1.0  # the slice above allows less
    v1 = tmp_path / "v1"
    membership.write_text("4:cpu,cpuacct:/docker/abc\n", encoding="ascii")
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("50000\n", encoding="ascii")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n", encoding="ascii")
    assert cgroup_cpu_quota(v1, membership) == 0.5


def test_usable_cpus_is_the_affinity_lowered_to_the_quota_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("50000 100000\n", encoding="ascii")
    assert usable_cpus(tmp_path) == 1  # half a CPU still needs one process
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 4)} 100000\n", encoding="ascii")
    assert usable_cpus(tmp_path) == affinity  # a quota above the mask does not add CPUs


def test_restart_delay_doubles_while_a_child_dies_young_and_is_capped() -> None:
    assert [restart_delay_s(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_a_crash_loop_backs_off_doubling_its_pause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A child that fails at once: crm-worker refuses --threads 0 (a usage error, exit 2).
    failing = ChildSpec("worker-1", ("worker", "--child", "--threads", "0"))
    log_file = (tmp_path / "children.log").open("wb")
    supervisor = Supervisor([failing], stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
    caplog.set_level(logging.INFO, logger="worker.processes")
    supervisor.start()
    try:
        time.sleep(6)
        restarts = supervisor.restarts
    finally:
        supervisor.stop()
    # Starts at 0 s, then after pauses of 1, 2, 4 s (each start takes ~1 s to fail): no spin.
    assert 1 <= restarts <= 3, restarts
    exits = [r.getMessage() for r in caplog.records if "exited with code 2" in r.getMessage()]
    assert exits and "restarting it in 1 s" in exits[0]
    if len(exits) > 1:
        assert "restarting it in 2 s" in exits[1]
    assert "Error" in (tmp_path / "children.log").read_text(encoding="utf-8")


def test_a_child_that_keeps_dying_young_makes_the_supervisor_hopeless(tmp_path: Path) -> None:
    failing = ChildSpec("worker-1", ("worker", "--child", "--threads", "0"))
    log_file = (tmp_path / "children.log").open("wb")
    supervisor = Supervisor([failing], stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
    supervisor.start()
    try:
        assert not supervisor.hopeless
        # Four early deaths in a row (pauses 1, 2, 4 s between them): what run --once gives
        # up waiting on.
        assert wait_until(lambda: supervisor.hopeless, timeout_s=30, poll_s=0.1)
        assert supervisor.restarts == 3
    finally:
        supervisor.stop()


def test_a_killed_worker_process_is_restarted_and_every_message_arrives_once(
    tmp_path: Path,
    smtp_server: SmtpSink,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    redis_url = redis_client.connection_pool.connection_kwargs
    url = f"redis://{redis_url.get('host', '127.0.0.1')}:{redis_url.get('port', 6379)}/"
    url += str(redis_url.get("db", 0))
    # Due today in real time: a delivery the sweeper takes over is re-checked at the real time.
    write_crm(tmp_path / "crm", TOTAL, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    smtp_server.delay_s["data"] = 0.005  # slow enough that the kill lands mid-delivery
    env = worker_env(
        {
            "CRM_REDIS_URL": url,
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(tmp_path / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
            "CRM_SMTP_HOST": smtp_server.host,
            "CRM_SMTP_PORT": str(smtp_server.port),
            "CRM_SMTP_SECURITY": "none",
            "CRM_SMTP_CONNECTIONS": str(CONNECTIONS),
            "CRM_SEND_LEASE_S": "3",
            "CRM_QUEUE_DEADLINE_S": "3",
            "CRM_SWEEP_INTERVAL_S": "0.5",
        }
    )
    supervisor = crm_worker("worker", "--processes", "2", env=env, cwd=tmp_path)
    runtime = Runtime(load_settings(env))
    try:
        assert wait_until(lambda: len(children_of(supervisor.pid)) == 2, timeout_s=20)
        first = children_of(supervisor.pid)
        assert wait_until(lambda: int(redis_client.zcard("crm:workers")) >= 2, timeout_s=30)
        queued = runtime.scheduler.run_pass(utc_now()).queued
        assert len(queued) == TOTAL
        assert wait_until(lambda: len(smtp_server.received) >= TOTAL // 5, timeout_s=60)
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        # Restarted: a new child takes its place beside the survivor.
        assert wait_until(
            lambda: (
                len(children_of(supervisor.pid)) == 2 and victim not in children_of(supervisor.pid)
            ),
            timeout_s=30,
        ), children_of(supervisor.pid)
        assert wait_until(
            lambda: len(set(smtp_server.message_ids())) == TOTAL, timeout_s=90, poll_s=0.2
        ), f"{len(set(smtp_server.message_ids()))} of {TOTAL} arrived"
        states = Counter(runtime.ledger.states(queued).values())
        assert states == {"sent": TOTAL}
        copies = Counter(smtp_server.message_ids())
        duplicates = sum(n - 1 for n in copies.values())
        # Only what the killed child had on the wire: one message per SMTP connection.
        assert duplicates <= CONNECTIONS, duplicates

        # SIGTERM: the supervisor and every (idle) child are gone within seconds.
        children = children_of(supervisor.pid)
        started = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 0
        stopped_s = time.monotonic() - started
        assert stopped_s < 10
        assert not [pid for pid in children if alive(pid)]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        runtime.close()
    log = next(tmp_path.glob("crm-worker-worker-*.log")).read_text(encoding="utf-8")
    assert f"(pid {victim}) was killed by SIGKILL" in log, log[-2000:]
    assert "restarted (pid" in log
    with capsys.disabled():
        print(
            f"\nworker process SIGKILLed: restarted, {TOTAL} of {TOTAL} arrived, "
            f"{duplicates} duplicates; SIGTERM stopped all in {stopped_s:.1f} s"
        )


def test_a_second_ctrl_c_kills_worker_processes_that_are_still_draining(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis
) -> None:
    kwargs = redis_client.connection_pool.connection_kwargs
    url = f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/"
    url += str(kwargs.get("db", 0))
    write_crm(tmp_path / "crm", 20, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    smtp_server.delay_s["data"] = 20  # every message hangs: a drain would take minutes
    env = worker_env(
        {
            "CRM_REDIS_URL": url,
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(tmp_path / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_SMTP_HOST": smtp_server.host,
            "CRM_SMTP_PORT": str(smtp_server.port),
            "CRM_SMTP_SECURITY": "none",
            "CRM_SMTP_TIMEOUT_S": "120",
        }
    )
    supervisor = crm_worker("worker", "--processes", "2", env=env, cwd=tmp_path)
    runtime = Runtime(load_settings(env))
    try:
        assert wait_until(lambda: int(redis_client.zcard("crm:workers")) >= 2, timeout_s=30)
        runtime.scheduler.run_pass(utc_now())
        assert wait_until(lambda: smtp_server.data_attempts >= 2, timeout_s=30)
        children = children_of(supervisor.pid)
        supervisor.send_signal(signal.SIGINT)  # drain: the children would wait for the relay
        time.sleep(1)
        # The process with the batch in hand is still draining (an idle one may be gone).
        assert supervisor.poll() is None and any(alive(pid) for pid in children)
        started = time.monotonic()
        supervisor.send_signal(signal.SIGINT)  # forced
        assert supervisor.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert wait_until(lambda: not any(alive(pid) for pid in children), timeout_s=5)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        runtime.close()
    log = next(tmp_path.glob("crm-worker-worker-*.log")).read_text(encoding="utf-8")
    assert "stopping now (SIGINT again)" in log
    assert "still running after a second stop request: killed" in log


def test_run_supervises_the_scheduler_and_the_workers_until_sigterm(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis
) -> None:
    kwargs = redis_client.connection_pool.connection_kwargs
    url = f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/"
    url += str(kwargs.get("db", 0))
    write_crm(tmp_path / "crm", 50, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    env = worker_env(
        {
            "CRM_REDIS_URL": url,
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(tmp_path / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_SMTP_HOST": smtp_server.host,
            "CRM_SMTP_PORT": str(smtp_server.port),
            "CRM_SMTP_SECURITY": "none",
        }
    )
    supervisor = crm_worker("run", "--processes", "2", env=env, cwd=tmp_path)
    try:
        assert wait_until(lambda: len(children_of(supervisor.pid)) == 3, timeout_s=20)
        children = children_of(supervisor.pid)
        # The scheduler's first pass queues the 50 greetings; the two workers send them.
        assert wait_until(lambda: len(set(smtp_server.message_ids())) == 50, timeout_s=60)
        assert redis_client.zcard("crm:schedulers") == 1
        assert redis_client.zcard("crm:workers") == 2
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=15) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert len(smtp_server.received) == 50
    log = next(tmp_path.glob("crm-worker-run-*.log")).read_text(encoding="utf-8")
    assert "running the scheduler and 2 worker processes × 1 thread × 8 SMTP connections" in log


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise AssertionError("no run of free ports")


def _serves_metrics(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return b"crm_" in answer.read()
    except OSError:
        return False


def _redis_url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return (
        f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/"
        f"{kwargs.get('db', 0)}"
    )


def test_run_with_more_processes_than_cpus_gives_the_scheduler_a_port_of_its_own(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    workers = usable_cpus() + 1  # more than the default count: its ports run further
    base = _free_ports(workers + 1)
    env = worker_env(
        {
            "CRM_REDIS_URL": _redis_url(redis_client),
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(REPO / "examples" / "crm"),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_METRICS_PORT": str(base),
            "CRM_SCHEDULER_INTERVAL_S": "3600",
        }
    )
    supervisor = crm_worker("run", "--processes", str(workers), env=env, cwd=tmp_path)
    try:
        ports = range(base, base + workers + 1)  # the workers', then the scheduler's
        assert wait_until(lambda: all(_serves_metrics(p) for p in ports), timeout_s=60)
        assert wait_until(lambda: redis_client.exists(SCHEDULER_LAST_PASS_KEY), timeout_s=30)
        assert redis_client.zcard("crm:workers") == workers
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    log = next(tmp_path.glob("crm-worker-run-*.log")).read_text(encoding="utf-8")
    assert "Address already in use" not in log and "restarting" not in log


def test_a_scheduler_that_cannot_serve_its_metrics_exits_loudly(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        env = worker_env(
            {
                "CRM_REDIS_URL": _redis_url(redis_client),
                "CRM_DATA_DIR": str(tmp_path / "var"),
                "CRM_SOURCE": str(REPO / "examples" / "crm"),
                "CRM_RULES_DIR": str(REPO / "rules"),
                "CRM_TEMPLATES_DIR": str(REPO / "templates"),
                "CRM_METRICS_PORT": str(port),
            }
        )
        scheduler = crm_worker("scheduler", env=env, cwd=tmp_path)
        try:
            code = scheduler.wait(timeout=30)  # not a process idling until someone stops it
        finally:
            if scheduler.poll() is None:
                scheduler.kill()
    assert code != 0
    log = next(tmp_path.glob("crm-worker-scheduler-*.log")).read_text(encoding="utf-8")
    assert f"CRM_METRICS_PORT: cannot serve metrics on port {port}" in log
    assert "pick a free port" in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_the_pass_of_run_once_ends_it_promptly(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis, signum: signal.Signals
) -> None:
    # 80,000 greetings: the pass alone takes well over 10 s here; the worker consumes its
    # first batches meanwhile.
    write_crm(tmp_path / "crm", 80_000, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    env = worker_env(
        {
            "CRM_REDIS_URL": _redis_url(redis_client),
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(tmp_path / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_SMTP_HOST": smtp_server.host,
            "CRM_SMTP_PORT": str(smtp_server.port),
            "CRM_SMTP_SECURITY": "none",
        }
    )
    once = crm_worker("run", "--once", "--processes", "1", env=env, cwd=tmp_path)
    try:
        assert wait_until(lambda: smtp_server.received, timeout_s=120)  # the pass is under way
        children = children_of(once.pid)
        once.send_signal(signum)
        started = time.monotonic()
        code = once.wait(timeout=60)
        stopped_s = time.monotonic() - started
    finally:
        if once.poll() is None:
            once.kill()
    assert stopped_s < 4, f"stopped {stopped_s:.1f} s after {signum.name}"
    assert code == 128 + signum
    assert not [pid for pid in children if alive(pid)]
    log = next(tmp_path.glob("crm-worker-run-*.log")).read_text(encoding="utf-8")
    assert f"stopping ({signum.name}) during the pass" in log
    assert "stopped during the pass" in log
    assert "killed" not in log  # the worker drained, nothing was forced
