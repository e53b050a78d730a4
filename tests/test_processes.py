"""Supervised worker processes, done to real processes: ``crm-worker worker --processes 2``
delivering to the test SMTP server while one of its children is SIGKILLed (restarted, every
message arrives, duplicates at most one per SMTP connection of the killed child), SIGTERM
stopping them all within a bound (repeated, still draining; a Ctrl-C after it forces), a crash
loop that backs off, and the CPU count a container allows."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, SmtpSink, redis_url
from tests.faultkit import crm_worker, wait_until, worker_env, write_crm
from tests.test_healing import RULE
from worker.cli.operations import _Interrupted, _stop_signals
from worker.constants import SCHEDULER_LAST_PASS_KEY
from worker.localtime import utc_now
from worker.processes import (
    ChildSpec,
    Supervisor,
    cgroup_cpu_quota,
    restart_delay_s,
    scheduler_child,
    usable_cpus,
    watch_parent,
    worker_child,
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


def test_a_child_is_told_the_pid_of_its_supervisor() -> None:
    assert worker_child(2, threads=1, log_flags=["-v"]).argv(4711) == (
        "-v",
        "worker",
        "--threads",
        "1",
        "--child",
        "4711",
    )
    assert scheduler_child().command(4711)[-3:] == ["scheduler", "--child", "4711"]


def _gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return gone.pid


def test_a_child_whose_supervisor_is_there_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    watching = watch_parent(stop, os.getppid(), interval_s=0.01)
    try:
        assert not stop.wait(0.2)
        assert watching.is_alive()
    finally:
        stop.set()
        watching.join(timeout=5)
    assert not caplog.records


def test_a_child_whose_supervisor_was_gone_before_it_started_stops_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Re-parented already (to init or a subreaper): its parent now is not the pid it was given.
    gone = _gone_pid()
    stop = threading.Event()
    watching = watch_parent(stop, gone)
    assert stop.is_set()  # before watch_parent returned: no interval of running without it
    watching.join(timeout=5)
    assert not watching.is_alive()
    assert [r.getMessage() for r in caplog.records] == [
        f"the supervising process {gone} was gone before this one started; stopping"
    ]


def test_a_child_whose_supervisor_disappears_later_stops(caplog: pytest.LogCaptureFixture) -> None:
    parent = [4711]
    stop = threading.Event()
    watch_parent(stop, 4711, current_parent=lambda: parent[0], interval_s=0.01)
    assert not stop.wait(0.1)
    parent[0] = 1  # the supervisor died: init adopted the child
    assert stop.wait(5)
    assert "the supervising process 4711 is gone; stopping" in caplog.text


def test_a_worker_process_started_for_a_supervisor_that_is_gone_exits_at_once(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    env = _env(tmp_path, redis_url(redis_client), demo=True)
    gone = _gone_pid()
    orphan = crm_worker("worker", "--child", str(gone), env=env, cwd=tmp_path)
    try:
        code = orphan.wait(timeout=60)  # not a worker consuming until someone kills it
    finally:
        if orphan.poll() is None:
            orphan.kill()
    log = next(tmp_path.glob("crm-worker-worker-*.log")).read_text(encoding="utf-8")
    assert code == 0, log[-2000:]
    assert f"the supervising process {gone} was gone before this one started; stopping" in log


def test_a_crash_loop_backs_off_doubling_its_pause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A child that fails at once: crm-worker refuses --threads 0 (a usage error, exit 2).
    failing = ChildSpec("worker-1", ("worker", "--threads", "0"))
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
    failing = ChildSpec("worker-1", ("worker", "--threads", "0"))
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
    url = redis_url(redis_client)
    # Due today in real time: a delivery the sweeper takes over is re-checked at the real time.
    write_crm(tmp_path / "crm", TOTAL, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    smtp_server.delay_s["data"] = 0.005  # slow enough that the kill lands mid-delivery
    env = _env(
        tmp_path,
        url,
        smtp=smtp_server,
        extra={
            "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
            "CRM_SMTP_CONNECTIONS": str(CONNECTIONS),
            "CRM_SEND_LEASE_S": "3",
            "CRM_QUEUE_DEADLINE_S": "3",
            "CRM_SWEEP_INTERVAL_S": "0.5",
        },
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


def _worker_behind_a_slow_relay(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis, *, data_delay_s: float
) -> tuple[subprocess.Popen[bytes], Runtime, list[str]]:
    """``crm-worker worker --processes 2`` with 20 greetings queued and a relay that takes
    ``data_delay_s`` over each message, returned once the first messages are on the wire
    (the supervisor, a runtime of the same settings and the keys queued)."""
    write_crm(tmp_path / "crm", 20, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    smtp_server.delay_s["data"] = data_delay_s
    env = _env(
        tmp_path, redis_url(redis_client), smtp=smtp_server, extra={"CRM_SMTP_TIMEOUT_S": "120"}
    )
    supervisor = crm_worker("worker", "--processes", "2", env=env, cwd=tmp_path)
    runtime = Runtime(load_settings(env))
    try:
        assert wait_until(lambda: int(redis_client.zcard("crm:workers")) >= 2, timeout_s=30)
        queued = runtime.scheduler.run_pass(utc_now()).queued
        assert wait_until(lambda: smtp_server.data_attempts >= 2, timeout_s=30)
    except BaseException:
        supervisor.kill()
        runtime.close()
        raise
    return supervisor, runtime, queued


def _log_says(tmp_path: Path, command: str, line: str) -> bool:
    """``line`` is in the log of ``crm-worker COMMAND`` (its signal handlers have run)."""
    return any(
        line in log.read_text(encoding="utf-8")
        for log in tmp_path.glob(f"crm-worker-{command}-*.log")
    )


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """The test installs SIGINT/SIGTERM handlers of a command; pytest's come back after it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _deliver(signum: signal.Signals) -> None:
    """Run the handler installed for ``signum`` as the signal would (in this thread)."""
    handler = signal.getsignal(signum)
    assert callable(handler)
    handler(signum, None)


@pytest.mark.parametrize(
    ("signals", "forced"),
    [
        ((signal.SIGINT,), False),
        ((signal.SIGTERM,), False),
        ((signal.SIGINT, signal.SIGINT), True),  # Ctrl-C twice
        ((signal.SIGTERM, signal.SIGTERM, signal.SIGTERM), False),  # a manager repeating itself
        ((signal.SIGTERM, signal.SIGINT), True),  # a person at the terminal asked too
        ((signal.SIGINT, signal.SIGTERM), False),
    ],
)
def test_only_a_ctrl_c_after_a_stop_forces_it(
    signal_handlers: None, signals: tuple[signal.Signals, ...], forced: bool
) -> None:
    stop, force = _stop_signals()
    for signum in signals:
        _deliver(signum)
    assert stop.is_set()
    assert force.is_set() is forced


def test_sigterm_again_during_the_pass_of_run_once_neither_interrupts_nor_forces(
    signal_handlers: None,
) -> None:
    passing = threading.Event()
    stop, force = _stop_signals(interrupting=passing)
    passing.set()
    with pytest.raises(_Interrupted):
        _deliver(signal.SIGTERM)  # ends the pass
    assert stop.is_set() and not passing.is_set()
    _deliver(signal.SIGTERM)  # the workers keep draining
    assert not force.is_set()
    _deliver(signal.SIGINT)
    assert force.is_set()


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_ctrl_c_after_a_stop_kills_worker_processes_that_are_still_draining(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis, first: signal.Signals
) -> None:
    # Every message hangs: a drain would take minutes.
    supervisor, runtime, _ = _worker_behind_a_slow_relay(
        tmp_path, smtp_server, redis_client, data_delay_s=20
    )
    try:
        children = children_of(supervisor.pid)
        supervisor.send_signal(first)  # drain: the children would wait for the relay
        assert wait_until(
            lambda: _log_says(tmp_path, "worker", f"stopping ({first.name})"), timeout_s=10
        )
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


def test_sigterm_again_keeps_the_worker_processes_draining(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis
) -> None:
    # A process manager may send SIGTERM more than once (`timeout`, systemd's control group,
    # `kill -TERM -PGID` reaching the supervisor and the children): the batch in hand is still
    # finished. 20 messages over 8 connections, 2 s each: the drain takes about 6 s.
    supervisor, runtime, queued = _worker_behind_a_slow_relay(
        tmp_path, smtp_server, redis_client, data_delay_s=2
    )
    try:
        children = children_of(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _log_says(tmp_path, "worker", "stopping (SIGTERM)"), timeout_s=10)
        supervisor.send_signal(signal.SIGTERM)
        assert wait_until(
            lambda: _log_says(tmp_path, "worker", "already stopping (SIGTERM again)"), timeout_s=10
        )
        # The second one came while the batch was still being sent.
        assert any(alive(pid) for pid in children)
        assert supervisor.wait(timeout=60) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    try:
        states = Counter(runtime.ledger.states(queued).values())
    finally:
        runtime.close()
    # Nothing was cut off mid-send: every message the relay took is recorded as sent.
    assert states["sending"] == 0, states
    assert states["sent"] >= len(set(smtp_server.message_ids())) > 0, states
    log = next(tmp_path.glob("crm-worker-worker-*.log")).read_text(encoding="utf-8")
    assert "killed" not in log, log[-2000:]


def test_run_supervises_the_scheduler_and_the_workers_until_sigterm(
    tmp_path: Path, smtp_server: SmtpSink, redis_client: redis.Redis
) -> None:
    url = redis_url(redis_client)
    write_crm(tmp_path / "crm", 50, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    env = _env(tmp_path, url, smtp=smtp_server)
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


def _env(
    tmp_path: Path,
    redis_url: str,
    *,
    demo: bool = False,
    smtp: SmtpSink | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """A ``crm-worker`` child's environment: the Redis at ``redis_url``, a data folder under
    ``tmp_path``, the sample templates, and the demo CRM with the sample rules (``demo``) or
    the CRM and rules written under ``tmp_path``; the test SMTP server when given; ``extra``
    last."""
    crm, rules = (
        (REPO / "examples" / "crm", REPO / "rules")
        if demo
        else (tmp_path / "crm", tmp_path / "rules")
    )
    env = {
        "CRM_REDIS_URL": redis_url,
        "CRM_DATA_DIR": str(tmp_path / "var"),
        "CRM_SOURCE": str(crm),
        "CRM_RULES_DIR": str(rules),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
    }
    if smtp is not None:
        env |= {
            "CRM_SMTP_HOST": smtp.host,
            "CRM_SMTP_PORT": str(smtp.port),
            "CRM_SMTP_SECURITY": "none",
        }
    return worker_env(env | (extra or {}))


def test_run_with_more_processes_than_cpus_gives_the_scheduler_a_port_of_its_own(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    workers = usable_cpus() + 1  # more than the default count: its ports run further
    base = _free_ports(workers + 1)
    env = _env(
        tmp_path,
        redis_url(redis_client),
        demo=True,
        extra={"CRM_METRICS_PORT": str(base), "CRM_SCHEDULER_INTERVAL_S": "3600"},
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
        env = _env(
            tmp_path, redis_url(redis_client), demo=True, extra={"CRM_METRICS_PORT": str(port)}
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
    env = _env(tmp_path, redis_url(redis_client), smtp=smtp_server)
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
