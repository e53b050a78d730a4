"""Supervised worker processes: every core of a machine, each child restarted when it dies.

One Python process delivers with one core (the GIL), so ``crm-worker run`` and ``crm-worker
worker`` start ``--processes N`` children (default: the CPUs this process may use, cgroup
quota included) and watch them:

* a child that exits while it should run is logged and started again, after a pause that
  doubles from ``CHILD_RESTART_BACKOFF_FIRST`` up to ``CHILD_RESTART_BACKOFF_MAX`` while it keeps
  dying young (a crash loop does not spin), and starts over once a child ran
  ``CHILD_STABLE_AFTER``;
* :meth:`Supervisor.stop` sends SIGTERM to every child (each drains: the batches in hand are
  finished and recorded) and SIGKILLs what still runs after ``stop_timeout_s``;
  :meth:`Supervisor.force` SIGKILLs at once (a second Ctrl-C). Deliveries of a killed child are
  taken over by the sweeper at their deadline, as after any crash.

A child is an ordinary ``crm-worker`` process (``python -m worker.cli … --child PID``, the
supervisor's pid) in the same process group; it ignores SIGINT (the supervisor decides what a
Ctrl-C means) and stops by itself when its supervisor disappears, even before the child got
going (see :func:`watch_parent`).

Example::

    >>> supervisor = Supervisor([worker_child(1, threads=1), worker_child(2, threads=1)])
    >>> supervisor.start()                                                # doctest: +SKIP
    >>> supervisor.stop()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from worker.constants import (
    CHILD_HOPELESS_FAILURES,
    CHILD_RESTART_BACKOFF_FIRST,
    CHILD_RESTART_BACKOFF_MAX,
    CHILD_STABLE_AFTER,
    PARENT_WATCH_INTERVAL,
    SUPERVISOR_POLL,
)
from worker.planning.scheduler import record_pass
from worker.records.heartbeats import process_name
from worker.runtime import RunSummary, Runtime

log = logging.getLogger(__name__)

#: Where cgroup v2 (and, below it, v1's cpu controller) is mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may really use: its affinity mask (``taskset``, ``--cpuset-cpus``),
    lowered to the CPU quota of its cgroup (``docker run --cpus 1.5`` allows 2 processes' worth
    of time slices, rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(cpus, 1)


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs' worth of time the cgroups of this process allow (``1.5``), or None without a limit.

    cgroup v2: ``cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``; cgroup v1:
    ``cpu/cpu.cfs_quota_us`` (-1: none) over ``cpu/cpu.cfs_period_us``. Read in the process's
    own cgroup (``membership``: a systemd unit's ``CPUQuota=``) and each one above it up to
    the mount point (a container sees its own cgroup there); the smallest limit wins."""
    own_v2, own_v1 = _own_cgroups(membership)
    limits = []
    for folder in _up_to(cgroup_root, own_v2):
        try:
            quota, _, period = (
                (folder / "cpu.max").read_text(encoding="ascii").strip().partition(" ")
            )
        except OSError:
            continue
        limits.append(None if quota == "max" else _ratio(quota, period))
    for folder in _up_to(cgroup_root / "cpu", own_v1):
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (folder / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        except OSError:
            continue
        limits.append(_ratio(quota, period))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _own_cgroups(membership: Path) -> tuple[str, str]:
    """This process's cgroup paths: the v2 one (``0::/path``) and the v1 cpu controller's."""
    v2 = v1 = "/"
    try:
        lines = membership.read_text(encoding="ascii").splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _up_to(root: Path, path: str) -> list[Path]:
    """``root/a/b``, ``root/a``, ``root`` for the cgroup path ``/a/b``."""
    parts = [part for part in path.split("/") if part and part != ".."]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _ratio(quota: str, period: str) -> float | None:
    try:
        allowed, per = int(quota), int(period or "100000")
    except ValueError:
        return None
    return allowed / per if allowed > 0 and per > 0 else None


#: The hidden ``crm-worker scheduler|worker`` option that makes it a supervised child; its value
#: is the supervisor's pid, appended to every child's arguments by :class:`Supervisor`.
CHILD_FLAG = "--child"


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child: its name in the log, its ``crm-worker`` arguments (those of a
    ``scheduler`` or ``worker`` command; the supervisor adds ``--child PID``) and the
    environment variables it gets on top of the supervisor's."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def argv(self, supervisor_pid: int) -> tuple[str, ...]:
        """The ``crm-worker`` arguments of a child of the process ``supervisor_pid``."""
        return (*self.args, CHILD_FLAG, str(supervisor_pid))

    def command(self, supervisor_pid: int) -> list[str]:
        return [sys.executable, "-m", "worker.cli", *self.argv(supervisor_pid)]


def worker_child(
    number: int,
    *,
    threads: int | None = None,
    log_flags: Sequence[str] = (),
    metrics_port: int | None = None,
) -> ChildSpec:
    """Worker process ``number`` (1-based). Each child serves its own metrics: the base port
    plus ``number - 1``, so N children on a host do not fight over one port."""
    args = [*log_flags, "worker"]
    if threads is not None:
        args += ["--threads", str(threads)]
    env = {} if metrics_port is None else {"CRM_METRICS_PORT": str(metrics_port + number - 1)}
    return ChildSpec(f"worker-{number}", tuple(args), env)


def scheduler_child(*, log_flags: Sequence[str] = (), metrics_port: int | None = None) -> ChildSpec:
    """The scheduler of ``crm-worker run`` (metrics on its own port when set)."""
    env = {} if metrics_port is None else {"CRM_METRICS_PORT": str(metrics_port)}
    return ChildSpec("scheduler", (*log_flags, "scheduler"), env)


class _Forked:
    """A child forked from this process that runs ``crm-worker`` with the spec's arguments;
    answers like :class:`subprocess.Popen` (``poll``, ``wait``, ``send_signal``, ``pid``)."""

    def __init__(
        self,
        spec: ChildSpec,
        env: Mapping[str, str],
        main: Callable[[], None],
        *,
        supervisor_pid: int,
    ) -> None:
        for stream in (sys.stdout, sys.stderr):  # else the child writes the parent's buffer too
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            # Not the supervisor's handlers: a stop before the child installed its own ends it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                os.environ.clear()
                os.environ.update(env)
                sys.argv = ["crm-worker", *spec.argv(supervisor_pid)]
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                log.exception("%s failed", spec.name)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = self.returncode if self.returncode is not None else 1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | _Forked | None = None
    started_at: float = 0.0
    #: Exits in a row that came before the child ran CHILD_STABLE_AFTER.
    quick_failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts the children, restarts those that die, stops them all on request.

    ``environ`` is the children's base environment (default: this process's); ``popen`` keyword
    arguments (``stdout``, ``stderr``, ``cwd``) go to every child. ``fork_main`` (the
    ``crm-worker`` entry point, reading ``sys.argv``): children started while this process runs
    no other thread are forked and call it, instead of starting a fresh interpreter."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        stop_timeout_s: float = 30.0,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fork_main: Callable[[], None] | None = None,
        **popen: object,
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child")
        self._children = [_Child(spec) for spec in children]
        self.stop_timeout_s = stop_timeout_s
        self._environ = dict(os.environ if environ is None else environ)
        self._clock = clock
        self._popen = popen
        self._fork_main = fork_main if hasattr(os, "fork") else None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ state

    @property
    def pids(self) -> dict[str, int]:
        """The running children's pids by name."""
        with self._lock:
            return {
                c.spec.name: c.process.pid
                for c in self._children
                if c.process is not None and c.process.poll() is None
            }

    @property
    def restarts(self) -> int:
        """Children started again after they died, in all."""
        with self._lock:
            return sum(c.restarts for c in self._children)

    @property
    def hopeless(self) -> bool:
        """Every child died young ``CHILD_HOPELESS_FAILURES`` times in a row (a bad setting, a
        CRM that cannot be read): a caller waiting for them to finish work should give up."""
        with self._lock:
            return all(c.quick_failures >= CHILD_HOPELESS_FAILURES for c in self._children)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start every child and the thread that watches them."""
        with self._lock:
            for child in self._children:
                self._spawn(child)
        self._watcher = threading.Thread(target=self._watch, name="crm-supervisor", daemon=True)
        self._watcher.start()

    def stop(self, *, force: threading.Event | None = None) -> None:
        """SIGTERM every child and wait for them to drain; SIGKILL those still running after
        ``stop_timeout_s`` or as soon as ``force`` is set."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        running = self._running()
        for child in running:
            _signal(child, signal.SIGTERM)
        deadline = self._clock() + self.stop_timeout_s
        while running and self._clock() < deadline and not (force and force.is_set()):
            # Finer than the watching thread's poll: the caller (``run --once``) exits when
            # the last child has.
            time.sleep(SUPERVISOR_POLL.total_seconds() / 5)
            running = [c for c in running if c.process is not None and c.process.poll() is None]
        for child in running:
            if child.process is not None and child.process.poll() is None:
                log.warning(
                    "%s (pid %d) still running%s: killed",
                    child.spec.name,
                    child.process.pid,
                    " after a second stop request"
                    if force and force.is_set()
                    else f" {self.stop_timeout_s:.0f} s after SIGTERM",
                )
                _signal(child, signal.SIGKILL)
        for child in running:
            if child.process is not None:
                child.process.wait()

    def force(self) -> None:
        """SIGKILL every child now (nothing drains; the sweeper takes over their work)."""
        self._stopping.set()
        for child in self._running():
            _signal(child, signal.SIGKILL)

    def serve(self, stop: threading.Event, force: threading.Event) -> None:
        """Start, run until ``stop`` is set, then stop (forced once ``force`` is set)."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop(force=force)

    # ------------------------------------------------------------------ inside

    def _running(self) -> list[_Child]:
        with self._lock:
            return [c for c in self._children if c.process is not None and c.process.poll() is None]

    def _spawn(self, child: _Child) -> None:
        env = self._environ | dict(child.spec.env)
        # The child compares its parent with this pid, not with the parent it finds once it
        # runs: had this process died meanwhile, that would be init's (or a subreaper's).
        supervisor_pid = os.getpid()
        main = self._fork_main
        if main is not None and threading.active_count() == 1 and not self._popen:
            # Nothing but this thread runs yet (no lock can be held by another thread): a fork
            # starts in milliseconds with every module already imported, where a fresh
            # interpreter spends about a second of CPU importing them. Restarts come later,
            # beside the watching thread, and start a fresh interpreter.
            child.process = _Forked(child.spec, env, main, supervisor_pid=supervisor_pid)
        else:
            child.process = subprocess.Popen(  # type: ignore[call-overload]
                child.spec.command(supervisor_pid), env=env, **self._popen
            )
        child.started_at = self._clock()
        child.restart_at = None
        log.debug("%s started (pid %d)", child.spec.name, child.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(SUPERVISOR_POLL.total_seconds()):
            with self._lock:
                for child in self._children:
                    self._look_after(child)

    def _look_after(self, child: _Child) -> None:
        now = self._clock()
        process = child.process
        if process is not None and child.restart_at is None:
            code = process.poll()
            if code is None:
                if now - child.started_at >= CHILD_STABLE_AFTER.total_seconds():
                    child.quick_failures = 0
                return
            ran_s = now - child.started_at
            if ran_s < CHILD_STABLE_AFTER.total_seconds():
                child.quick_failures += 1
            else:
                child.quick_failures = 0
            delay_s = restart_delay_s(child.quick_failures)
            child.restart_at = now + delay_s
            log.warning(
                "%s (pid %d) %s after %.1f s; restarting it in %.0f s",
                child.spec.name,
                process.pid,
                describe_exit(code),
                ran_s,
                delay_s,
            )
            return
        if child.restart_at is not None and now >= child.restart_at:
            old = process.pid if process is not None else 0
            self._spawn(child)
            child.restarts += 1
            assert child.process is not None
            log.info("%s restarted (pid %d, was %d)", child.spec.name, child.process.pid, old)


def restart_delay_s(quick_failures: int) -> float:
    """Pause before a restart: none after a child that ran a while, else doubling from
    ``CHILD_RESTART_BACKOFF_FIRST`` to ``CHILD_RESTART_BACKOFF_MAX``."""
    if quick_failures <= 0:
        return 0.0
    first = CHILD_RESTART_BACKOFF_FIRST.total_seconds()
    return float(min(first * 2 ** (quick_failures - 1), CHILD_RESTART_BACKOFF_MAX.total_seconds()))


def describe_exit(code: int) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal(child: _Child, signum: signal.Signals) -> None:
    if child.process is not None and child.process.poll() is None:
        # It may exit between the poll and the signal.
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signum)


def watch_parent(
    stop: threading.Event,
    parent_pid: int,
    *,
    current_parent: Callable[[], int] = os.getppid,
    interval_s: float = PARENT_WATCH_INTERVAL.total_seconds(),
) -> threading.Thread:
    """In a child: set ``stop`` when the supervisor ``parent_pid`` (the pid it passed, not
    ``os.getppid()`` read here) is gone (SIGKILLed, OOM), so no orphan keeps consuming. One that
    died before this child got here is noticed at once: the child was re-parented already.
    ``current_parent`` and ``interval_s`` are for tests. Returns the (daemon) watching thread.

    Example::

        >>> stop = threading.Event()
        >>> _ = watch_parent(stop, parent_pid=os.getppid())
        >>> stop.is_set()
        False
        >>> stop.set()  # the watching thread ends too
    """

    if current_parent() != parent_pid:
        log.warning(
            "the supervising process %d was gone before this one started; stopping", parent_pid
        )
        stop.set()

    def watch() -> None:
        while not stop.wait(interval_s):
            if current_parent() != parent_pid:
                log.warning("the supervising process %d is gone; stopping", parent_pid)
                stop.set()

    thread = threading.Thread(target=watch, name="crm-parent-watch", daemon=True)
    thread.start()
    return thread


def run_once_supervised(
    runtime: Runtime,
    now: datetime,
    supervisor: Supervisor,
    *,
    stop: threading.Event,
    force: threading.Event,
    timeout_s: float = 600.0,
    passing: threading.Event | None = None,
) -> RunSummary:
    """``crm-worker run --once`` on every core: the worker children start, this process runs
    the pass (they consume its first batches while it plans the rest), waits until every key
    it queued is final or waiting for a retry, then the children drain and stop.

    Waiting ends early when ``stop`` is set (Ctrl-C, SIGTERM) or every child keeps dying
    (:attr:`Supervisor.hopeless`); the summary then shows what was still in flight.
    ``passing`` is set while the pass runs: a signal handler may then end the pass by raising
    (the pass itself does not look at ``stop``); the children drain all the same."""
    supervisor.start()  # first: the children are forked before this process opens anything
    try:
        runtime.actor  # noqa: B018 - declares the queue (a child may have done so already)
        began = time.monotonic()
        if passing is not None:
            passing.set()
        try:
            report = runtime.scheduler.run_pass(now)
        finally:
            if passing is not None:
                passing.clear()
        # `crm-worker status` shows it as the last pass, as it shows a scheduler's.
        record_pass(
            runtime.redis,
            report,
            by=f"run --once {process_name()}",
            took_s=time.monotonic() - began,
        )
        states = runtime.wait_for(
            report.queued,
            timeout_s=timeout_s,
            keep_waiting=lambda: not stop.is_set() and not supervisor.hopeless,
        )
        log.info(
            "run --once: %d deliveries handled %.2f s after the pass began (%d worker processes)",
            len(report.queued),
            time.monotonic() - began,
            len(supervisor.pids),
        )
    finally:
        supervisor.stop(force=force)
    if supervisor.hopeless:
        log.error("every worker process kept dying (see the lines above); gave up waiting")
    return RunSummary(report, Counter(states.values()))
