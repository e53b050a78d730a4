"""One active scheduler: the leader keeps its lock pass after pass, a standby takes over once
the leader stops, and each change of leadership is one log line (real Redis, real threads)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from worker.localtime import parse_instant
from worker.planning.scheduler import LeaderLock, run_scheduler

NOW = parse_instant("2026-03-14T10:00:00Z")


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _start(runtime: Any, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=run_scheduler,
        args=(runtime.scheduler, LeaderLock(runtime.redis)),
        kwargs={"interval_s": 0.05, "stop": stop, "clock": lambda: NOW},
    )
    thread.start()
    return thread


def test_the_leader_keeps_its_lock_and_a_standby_takes_over(
    make_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.planning.scheduler")
    leader_runtime, standby_runtime = make_runtime(), make_runtime()
    stop_leader, stop_standby = threading.Event(), threading.Event()
    leader = _start(leader_runtime, stop_leader)
    try:
        _wait(lambda: caplog.text.count("pass at ") >= 5)
        standby = _start(standby_runtime, stop_standby)
        try:
            passes = caplog.text.count("pass at ")
            _wait(lambda: caplog.text.count("pass at ") >= passes + 5)
            lines = [r.getMessage() for r in caplog.records]
            # Five passes and more by one leader: it became the leader once and never let go.
            assert lines.count("scheduler is the leader") == 1
            assert not any("lost the lock" in line for line in lines)
            stop_leader.set()
            leader.join()
            _wait(lambda: [r.getMessage() for r in caplog.records].count(
                "scheduler is the leader") == 2)  # fmt: skip
        finally:
            stop_standby.set()
            standby.join()
    finally:
        stop_leader.set()
        leader.join()


def test_stopping_while_redis_is_gone_ends_without_a_traceback(make_runtime: Any) -> None:
    import redis

    runtime = make_runtime()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    stop = threading.Event()
    stop.set()  # stop at once: only the lock's release is left, and Redis is gone
    run_scheduler(runtime.scheduler, LeaderLock(dead), interval_s=0.05, stop=stop)
