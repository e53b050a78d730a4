"""``Runtime.wait_for`` watches many keys a window at a time and never reads a final key again,
yet returns the state of every key, in the order asked, once none is in flight."""

from __future__ import annotations

import threading
import time

import pytest

import worker.runtime
from tests.faultkit import NOW
from worker.records.ledger import Ledger


@pytest.fixture
def runtime(make_runtime, monkeypatch):
    monkeypatch.setattr(worker.runtime, "WAIT_POLL_WINDOW", 4)
    return make_runtime()


def claimed(runtime, count):
    keys = [f"birthday-greeting:customer:{n}:2026/email" for n in range(count)]
    runtime.ledger.claim_many([(k, "birthday-greeting", NOW) for k in keys], now=NOW)
    runtime.ledger.mark_queued(keys)
    return keys


def set_state(runtime, key, state):
    runtime.redis.hset(Ledger.redis_key(key), "state", state)


def test_waits_for_every_key_and_reads_final_ones_once(runtime, monkeypatch):
    keys = claimed(runtime, 11)
    finals = {key: ("sent", "failed", "skipped")[n % 3] for n, key in enumerate(keys)}
    for key in keys[1:]:  # all but the oldest are done already
        set_state(runtime, key, finals[key])
    reads: list[list[str]] = []
    states = runtime.ledger.states
    monkeypatch.setattr(runtime.ledger, "states", lambda ks: reads.append(list(ks)) or states(ks))

    def finish_oldest_later():
        time.sleep(0.3)
        set_state(runtime, keys[0], finals[keys[0]])

    thread = threading.Thread(target=finish_oldest_later)
    thread.start()
    result = runtime.wait_for(keys, timeout_s=30, poll_s=0.02)
    thread.join()

    assert result == finals and list(result) == keys
    assert len(reads) > 3  # it did wait for the oldest key
    # While the oldest key was in flight only the first window was read; each later key once.
    later_reads = [key for window in reads for key in window if key not in keys[:4]]
    assert sorted(later_reads) == sorted(keys[4:])
    assert all(len(window) <= 4 for window in reads)


def test_returns_in_flight_states_when_time_is_up(runtime):
    keys = claimed(runtime, 9)
    for key in keys:
        set_state(runtime, key, "sent")
    set_state(runtime, keys[5], "sending")  # stuck in the second window

    result = runtime.wait_for(keys, timeout_s=0.2, poll_s=0.02)

    assert result == {key: "sending" if key == keys[5] else "sent" for key in keys}
