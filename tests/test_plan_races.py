"""Planning ahead under stress: two schedulers racing a full plan, a stalled leader, dirty
marks added while a pass runs (real Redis, real threads)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import worker.planning.due_index as due_index
from tests.conftest import REPO
from tests.test_sql_source import QUERIES, load_demo
from worker.constants import (
    DIRTY_RECORDS_KEY,
    DUE_INDEX_KEY,
    DUE_INDEX_RECORDS_KEY,
    DUE_INDEX_STATE_KEY,
    SCHEDULER_LOCK_KEY,
)
from worker.errors import LeadershipLostError
from worker.localtime import parse_instant
from worker.planning.due_index import DueIndex, Entry, PlanState, mark_dirty
from worker.planning.events import record_event
from worker.planning.scheduler import LeaderLock, run_scheduler
from worker.sources.mapping import load_mapping
from worker.sources.sql import SqlSource

NOW = parse_instant("2026-03-14T10:00:00Z")
AT = datetime(2026, 12, 6, 12, tzinfo=UTC)
STATE = PlanState(AT + timedelta(hours=36), "fp", {"customer": "2026-12-06T05:00:00"})


def _entry(n: int) -> Entry:
    return Entry(f"bday:customer:{n}:2026/a", f"customer:{n}", AT)


def test_two_full_plans_racing_end_with_the_new_leaders_complete_index(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old leader stalls mid-plan, its lock expires, a standby takes it and plans too;
    the old leader's swap lands while the new one still writes. The index ends complete
    (the new leader's), never empty nor half of one plan."""
    monkeypatch.setattr(due_index, "DUE_INDEX_CHUNK", 2)
    old, new = DueIndex(redis_client), DueIndex(redis_client)
    redis_client.set(SCHEDULER_LOCK_KEY, "old")
    old_halfway, new_halfway = threading.Event(), threading.Event()

    def old_entries() -> Iterator[Entry]:
        yield from map(_entry, range(6))
        old_halfway.set()
        assert new_halfway.wait(10)  # the standby has taken over and written half its plan
        yield from map(_entry, range(6, 10))

    def new_entries() -> Iterator[Entry]:
        assert old_halfway.wait(10)
        redis_client.set(SCHEDULER_LOCK_KEY, "new")  # the old leader's lock expired
        yield from map(_entry, range(4))
        new_halfway.set()
        time.sleep(0.5)  # the old leader swaps meanwhile
        yield from map(_entry, range(4, 10))

    results: dict[str, object] = {}

    def run(name: str, index: DueIndex, entries: Iterator[Entry]) -> None:
        try:
            results[name] = index.rebuild(entries, STATE, leader=name)
        except Exception as exc:  # a failure must show in the assertion below
            results[name] = repr(exc)

    threads = [
        threading.Thread(target=run, args=("old", old, old_entries())),
        threading.Thread(target=run, args=("new", new, new_entries())),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"old": None, "new": 10}
    members = sorted(
        int(m.decode().split(":")[2]) for m in redis_client.zrange(DUE_INDEX_KEY, 0, -1)
    )
    assert members == list(range(10))
    assert redis_client.hlen(DUE_INDEX_RECORDS_KEY) == 10
    assert new.state().watermarks == {"customer": "2026-12-06T05:00:00"}
    # Neither plan left its keys built aside behind.
    assert not redis_client.keys(DUE_INDEX_KEY + ":building*")
    assert not redis_client.keys(DUE_INDEX_RECORDS_KEY + ":building*")


def test_a_plan_built_aside_expires_when_its_pass_dies(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(due_index, "DUE_INDEX_CHUNK", 2)

    def dies() -> Iterator[Entry]:
        yield from map(_entry, range(5))
        raise RuntimeError("the CRM read failed")

    with pytest.raises(RuntimeError):
        DueIndex(redis_client).rebuild(dies(), STATE)
    assert not redis_client.keys(DUE_INDEX_KEY + ":building*")
    # A pass killed outright cannot clean up: what it wrote meanwhile carries an expiry.
    ttls: list[int] = []

    def watched() -> Iterator[Entry]:
        yield from map(_entry, range(5))
        ttls.extend(redis_client.ttl(k) for k in redis_client.keys(DUE_INDEX_KEY + ":building*"))

    DueIndex(redis_client).rebuild(watched(), STATE)
    assert ttls and all(0 < ttl <= 15 * 60 for ttl in ttls)
    assert redis_client.ttl(DUE_INDEX_KEY) == -1, "the plan swapped in does not expire"


def test_a_watermark_save_after_losing_the_lock_is_dropped(redis_client: redis.Redis) -> None:
    index = DueIndex(redis_client)
    redis_client.set(SCHEDULER_LOCK_KEY, "new")
    index.rebuild(map(_entry, range(3)), STATE, leader="new")
    assert not index.save_watermarks({"customer": "2026-12-07T00:00:00"}, leader="old")
    assert index.state().watermarks == {"customer": "2026-12-06T05:00:00"}
    assert index.save_watermarks({"customer": "2026-12-07T00:00:00"}, leader="new")
    assert index.state().watermarks == {"customer": "2026-12-07T00:00:00"}


def test_the_lock_is_renewed_while_a_long_pass_runs(redis_client: redis.Redis) -> None:
    ttl = timedelta(milliseconds=600)
    leader, standby = LeaderLock(redis_client, ttl=ttl), LeaderLock(redis_client, ttl=ttl)
    assert leader.acquire()
    with leader.renewing() as lost:
        deadline = time.monotonic() + 2.0  # more than three TTLs
        while time.monotonic() < deadline:
            assert not standby.acquire(), "the standby took the lock of a running pass"
            time.sleep(0.05)
        assert not lost.is_set()
    # The pass over, the lock lapses unless renewed: the standby takes it.
    time.sleep(0.7)
    assert standby.acquire()


def test_renewal_notices_a_lock_taken_by_another(redis_client: redis.Redis) -> None:
    lock = LeaderLock(redis_client, ttl=timedelta(milliseconds=300))
    assert lock.acquire()
    with lock.renewing() as lost:
        redis_client.set(SCHEDULER_LOCK_KEY, "someone else")
        assert lost.wait(2)


def _crm(tmp_path: Path) -> Path:
    folder = tmp_path / "crm"
    shutil.copytree(REPO / "examples" / "crm", folder)
    return folder


def test_a_pass_that_lost_the_lock_keeps_nothing_of_its_plan(
    make_runtime: Any, make_settings: Any, tmp_path: Path
) -> None:
    runtime = make_runtime(make_settings(CRM_SOURCE=str(_crm(tmp_path))))
    runtime.redis.set(SCHEDULER_LOCK_KEY, "the scheduler that took over")
    with pytest.raises(LeadershipLostError):
        runtime.scheduler.run_planned_pass(NOW, leader="a stalled scheduler")
    assert not runtime.redis.exists(DUE_INDEX_KEY)
    assert runtime.scheduler.ahead.index.state().horizon_end is None, "no plan was kept"
    assert not runtime.redis.keys(DUE_INDEX_KEY + ":building*")


def _wait(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_scheduler_that_leads_again_plans_afresh(
    make_runtime: Any, make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A leads and plans; B takes the lock (A stalled) and plans; once B stops, A leads again
    and must not trust the index B left: it plans afresh."""
    caplog.set_level(logging.INFO)
    crm = _crm(tmp_path)
    first, second = (make_runtime(make_settings(CRM_SOURCE=str(crm))) for _ in range(2))
    lock_a, lock_b = LeaderLock(first.redis), LeaderLock(second.redis)
    stop_a, stop_b = threading.Event(), threading.Event()

    def start(runtime: Any, lock: LeaderLock, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=run_scheduler,
            args=(runtime.scheduler, lock),
            kwargs={"interval_s": 0.05, "stop": stop, "clock": lambda: NOW},
        )
        thread.start()
        return thread

    def full_passes() -> int:
        return sum("planned ahead to" in r.getMessage() for r in caplog.records)

    a = start(first, lock_a, stop_a)
    b = None
    try:
        _wait(lambda: full_passes() == 1 and caplog.text.count("pass at ") >= 3)
        b = start(second, lock_b, stop_b)
        # A stalls past its lock's TTL: B's token is in the lock now.
        first.redis.set(SCHEDULER_LOCK_KEY, lock_b.token, px=60_000)
        _wait(lambda: "scheduler lost the lock" in caplog.text)  # between or during passes
        _wait(lambda: full_passes() == 2)  # B, new leader, planned afresh
        stop_b.set()
        b.join()  # B releases the lock: A takes over
        _wait(
            lambda: [r.getMessage() for r in caplog.records].count("scheduler is the leader") == 3
        )
        _wait(lambda: full_passes() == 3)
        time.sleep(0.3)  # a few more passes of A: no other full one
        assert full_passes() == 3
    finally:
        stop_a.set()
        stop_b.set()
        a.join()
        if b is not None:
            b.join()


def test_a_record_marked_again_while_a_pass_runs_stays_dirty(redis_client: redis.Redis) -> None:
    index = DueIndex(redis_client)
    index.rebuild(map(_entry, range(3)), STATE)
    mark_dirty(redis_client, "customer", "1")
    mark_dirty(redis_client, "customer", "2")
    assert index.take_dirty() == ["customer:1", "customer:2"]
    # The CRM changes customer 1 again while the pass re-plans what it took.
    mark_dirty(redis_client, "customer", "1")
    index.clean()
    assert index.take_dirty() == ["customer:1"], "the new mark is for the next pass"


def test_records_a_failed_pass_took_are_taken_again(redis_client: redis.Redis) -> None:
    index = DueIndex(redis_client)
    index.rebuild(map(_entry, range(3)), STATE)
    mark_dirty(redis_client, "customer", "1")
    assert index.take_dirty() == ["customer:1"]
    mark_dirty(redis_client, "customer", "2")  # the pass failed before clean()
    assert index.take_dirty() == ["customer:1", "customer:2"]


def test_an_overflow_during_a_full_pass_is_not_erased_by_its_swap(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(due_index, "MAX_DIRTY_RECORDS", 2)
    index = DueIndex(redis_client)
    index.rebuild(map(_entry, range(3)), STATE)
    index.begin()
    index.take_dirty(full=True)  # a full pass starts

    def entries() -> Iterator[Entry]:
        yield from map(_entry, range(3))
        for n in range(5):  # meanwhile the CRM reports more changes than are kept
            mark_dirty(redis_client, "customer", str(n))

    index.rebuild(entries(), STATE)
    assert index.state().overflow, "the next pass must be a full one"


def test_without_planned_rules_events_do_not_fill_the_dirty_set(
    make_runtime: Any, tmp_path: Path
) -> None:
    # The demo SQL mapping has no change column: every rule reads the CRM at every pass.
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    load_demo.load(url)
    runtime = make_runtime(source=SqlSource(url, load_mapping(QUERIES)))
    runtime.scheduler.run_planned_pass(NOW)
    for customer_id in range(1, 20):
        record_event(runtime.redis, "customer.updated", str(customer_id), at=NOW)
    assert not runtime.redis.scard(DIRTY_RECORDS_KEY)
    assert not runtime.redis.exists(DUE_INDEX_STATE_KEY)
