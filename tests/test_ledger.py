"""Several outcomes recorded in one round trip stay separate atomic steps: each needs its own
lease, each gets its delivery-log entry, and one that lost its lease does not stop the rest."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

import worker.records.ledger
from tests.faultkit import NOW
from worker.constants import CLAIM_STALE_AFTER
from worker.delivery.batch import deliver_batch
from worker.localtime import utc_now
from worker.records.delivery_log import LogEntry
from worker.records.ledger import Finish, Ledger


def test_finish_many_records_each_outcome_with_its_own_lease(make_runtime):
    runtime = make_runtime()
    ledger, journal = runtime.ledger, runtime.delivery_log
    keys = [f"birthday-greeting:customer:{n}:2026/email" for n in range(4)]
    ledger.claim_many([(key, "birthday-greeting", NOW) for key in keys], now=NOW)
    ledger.mark_queued(keys)
    now = utc_now()
    ledger.begin_many(keys[:3], now=now, owner="me")
    ledger.begin_many(keys[3:], now=now, owner="someone else")

    def outcome(key: str, state, reason: str = "") -> Finish:
        entry = LogEntry(now, state, "birthday-greeting", key, "email", "x@example.com", reason)
        return Finish(key, state, "me", reason, "250 ok", now, log_entry=journal.append(entry))

    results = ledger.finish_many(
        [
            outcome(keys[0], "sent"),
            outcome(keys[1], "failed", "550 gone"),
            outcome(keys[2], "unknown", "connection lost"),
            outcome(keys[3], "sent"),  # not our lease
        ]
    )

    assert results == [True, True, True, False]
    assert ledger.states(keys) == dict(
        zip(keys, ["sent", "failed", "unknown", "sending"], strict=True)
    )
    assert ledger.get(keys[1])["reason"] == "550 gone"
    assert ledger.get(keys[0])["detail"] == "250 ok"
    logged = [(entry.key, entry.status) for entry in journal.read()]
    assert logged == [
        (keys[0], "sent"),
        (keys[1], "failed"),
        (keys[2], "unknown"),
        (keys[3], "sent"),  # the log tells what the worker saw, even without the lease
    ]
    assert ledger.finish_many([]) == []


def test_many_at_once_survives_redis_losing_its_scripts_and_raises_real_errors(make_runtime):
    runtime = make_runtime()
    ledger, client = runtime.ledger, runtime.redis
    keys = [f"birthday-greeting:customer:{n}:2026/email" for n in range(3)]
    client.script_flush()  # as after a restart of Redis without persistence
    assert ledger.claim_many([(key, "birthday-greeting", NOW) for key in keys], now=NOW) == [
        True,
        True,
        True,
    ]
    client.script_flush()
    ledger.mark_queued(keys)
    client.script_flush()
    begins = ledger.begin_many(keys, now=utc_now(), owner="me")
    assert [b.verdict for b in begins] == ["go", "go", "go"]
    client.script_flush()
    now = utc_now()
    assert ledger.finish_many([Finish(key, "sent", "me", "", "250", now) for key in keys]) == [
        True,
        True,
        True,
    ]
    assert set(ledger.states(keys).values()) == {"sent"}

    client.set(Ledger.redis_key("broken"), "not a hash")  # a script error is not swallowed
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ledger.begin_many(["birthday-greeting:customer:9:2026/email", "broken"], now=now, owner="x")


def test_claims_and_leases_of_a_batch_are_each_decided_as_alone(make_runtime, monkeypatch):
    monkeypatch.setattr(worker.records.ledger, "LEDGER_SCRIPT_KEYS", 2)  # several script calls
    runtime = make_runtime()
    ledger, client = runtime.ledger, runtime.redis
    k = [f"birthday-greeting:customer:{n}:2026/email" for n in range(6)]
    now = utc_now()
    long_ago = now - CLAIM_STALE_AFTER - timedelta(seconds=1)
    assert ledger.claim_many(
        [(k[1], "r1", NOW), (k[2], "r1", NOW), (k[3], "r1", NOW)], now=long_ago
    )
    ledger.mark_queued([k[3]])  # queued long ago: never claimable again
    ledger.claim_many([(k[1], "r1", NOW)], now=now)  # k1: claimed now, fresh

    claimed = ledger.claim_many([(key, f"rule{n}", NOW) for n, key in enumerate(k)], now=now)

    assert claimed == [True, False, True, False, True, True]  # k2's claim had gone stale
    assert [ledger.get(k[n])["rule"] for n in (0, 4, 5)] == ["rule0", "rule4", "rule5"]
    assert ledger.get(k[2])["claimed_at"] == f"{now.timestamp():.3f}"
    assert ledger.states(k) == dict.fromkeys(k, "claimed") | {k[3]: "queued"}

    ledger.mark_queued(k[:3])
    ledger.finish_many([])  # nothing
    ledger.begin_many([k[0]], now=now, owner="a")  # k0: leased to a, until now + lease
    ledger.begin_many([k[1]], now=long_ago, owner="b")  # k1: a lease that has run out
    ledger.begin_many([k[2]], now=now, owner="c")
    ledger.finish(k[2], "sent", owner="c", now=now)
    client.delete(Ledger.redis_key(k[5]))

    begins = ledger.begin_many(k, now=now, owner="me")

    assert [b.verdict for b in begins] == ["busy", "go", "done", "go", "go", "missing"]
    assert begins[0].lease_until == float(f"{(now + ledger.send_lease).timestamp():.3f}")
    assert begins[1].attempt == 2 and begins[3].attempt == 1 and begins[2].state == "sent"
    assert ledger.get(k[1])["lease_owner"] == "me" and ledger.get(k[0])["lease_owner"] == "a"
    assert ledger.begin_many([], now=now, owner="me") == []


def test_a_delivery_waiting_out_its_backoff_is_not_sent_early_by_a_second_message(make_runtime):
    """A second queue message of a delivery in ``retrying`` (a sweeper's, a broker re-run)
    finds it busy until its retry time: a greylisting relay sees the retries it asked for."""
    runtime = make_runtime()
    ledger = runtime.ledger
    key = "birthday-greeting:customer:1:2026/email"
    ledger.claim_many([(key, "birthday-greeting", NOW)], now=NOW)
    ledger.mark_queued([key])
    now = utc_now()
    (first,) = ledger.begin_many([key], now=now, owner="me")
    assert first.verdict == "go"
    retry_after = timedelta(minutes=30)
    ledger.finish(key, "retrying", owner="me", reason="451 greylisted", now=now,
                  retry_after=retry_after)  # fmt: skip
    (early,) = ledger.begin_many([key], now=now + timedelta(seconds=5), owner="other")
    assert early.verdict == "busy"
    assert float(early.lease_until) >= (now + retry_after).timestamp() - 1
    (due,) = ledger.begin_many([key], now=now + retry_after + timedelta(seconds=1), owner="other")
    assert due.verdict == "go" and due.attempt == 2


def test_a_send_pause_moves_the_deadlines_so_no_sweeper_queues_the_waiting_work(make_runtime):
    """Every batch meeting a 5-minute pause leaves its keys waiting; their deadlines move past
    the pause, so a sweeper a minute later takes none of them over (no second queue message)."""
    runtime = make_runtime()
    ledger = runtime.ledger
    keys = [f"birthday-greeting:customer:{n}:2026/email" for n in range(3)]
    ledger.claim_many([(key, "birthday-greeting", NOW) for key in keys], now=NOW)
    ledger.mark_queued(keys)
    now = utc_now()
    runtime.pause.pause(now, "535 authentication failed", length=timedelta(minutes=5))
    results = deliver_batch(runtime.deliverer, keys, as_of=NOW, enqueued_at=now, now=now)
    assert {r.outcome for r in results} == {"paused"}
    later = Ledger(runtime.redis, clock=lambda: now + timedelta(seconds=61))
    assert later.take_over(limit=100) == []
    after_the_pause = Ledger(runtime.redis, clock=lambda: now + timedelta(minutes=7))
    assert sorted(stale.key for stale in after_the_pause.take_over(limit=100)) == sorted(keys)
