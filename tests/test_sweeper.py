"""The ledger is the truth, the queue a hint: every delivery in a non-final state has a deadline,
and the sweeper queues again whatever passed it — and nothing that is final or still in time."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from dramatiq import Message
from prometheus_client import CollectorRegistry, generate_latest

from tests.faultkit import NOW
from worker.constants import DEADLINE_INDEX_KEY
from worker.delivery.sweeper import Sweeper
from worker.localtime import utc_now
from worker.metrics import StatusCollector
from worker.records.ledger import Ledger
from worker.records.status import read_status

RULE = "birthday-greeting"


def keys(count: int) -> list[str]:
    return [f"{RULE}:customer:{n}:2026/email" for n in range(1, count + 1)]


def queued_batches(runtime) -> list[dict]:  # type: ignore[no-untyped-def]
    """The deliver_batch messages waiting in the queue, oldest first."""
    queue_key = runtime.actor.queue_key
    ids = [i.decode() for i in runtime.redis.lrange(queue_key, 0, -1)]
    raw = runtime.redis.hmget(f"{queue_key}.msgs", ids) if ids else []
    return [Message.decode(r).kwargs for r in raw]


def test_deliveries_past_their_deadline_are_taken_over_and_queued_again(make_runtime):
    runtime = make_runtime()
    expired = Ledger(
        runtime.redis,
        send_lease=timedelta(seconds=-1),
        claim_deadline=timedelta(seconds=-1),
        queue_deadline=timedelta(seconds=-1),
    )
    claimed, queued, sending, retrying, sent, fresh = (
        k for k in [keys(6)[i : i + 1] for i in range(6)]
    )
    expired.claim_many(
        [(k, RULE, NOW) for k in claimed + queued + sending + retrying + sent], now=NOW
    )
    expired.mark_queued(queued + sending + retrying + sent)
    now = utc_now()
    expired.begin_many(sending + retrying + sent, now=now, owner="dead worker")
    expired.finish(retrying[0], "retrying", owner="dead worker", now=now, retry_after=timedelta(0))
    expired.finish(sent[0], "sent", owner="dead worker", now=now)
    # A delivery claimed by the real ledger is still within its deadline: left alone.
    runtime.ledger.claim_many([(fresh[0], RULE, NOW)], now=NOW)

    report = Sweeper(runtime.ledger, runtime.actor).sweep()

    assert report.taken == Counter({"claimed": 1, "queued": 1, "sending": 1, "retrying": 1})
    stuck = claimed + queued + sending + retrying
    assert runtime.ledger.states(stuck + sent + fresh) == {
        claimed[0]: "queued",  # the scheduler died before queuing it
        queued[0]: "queued",
        sending[0]: "sending",  # the next worker takes the expired lease over
        retrying[0]: "retrying",
        sent[0]: "sent",
        fresh[0]: "claimed",
    }
    assert runtime.ledger.get(sending[0])["takeovers"] == "1"
    batches = queued_batches(runtime)
    assert sorted(k for b in batches for k in b["keys"]) == sorted(stuck)
    # Re-checked as of the day it was planned for (a replayed --now), not the wall clock.
    assert all(abs(b["as_of"] - NOW.timestamp()) < 60 for b in batches)
    # A final delivery has no deadline; a taken-over one has a new one, in the future.
    index = {
        m.decode(): s for m, s in runtime.redis.zrange(DEADLINE_INDEX_KEY, 0, -1, withscores=True)
    }
    assert runtime.ledger.redis_key(sent[0]) not in index
    assert all(index[runtime.ledger.redis_key(k)] > now.timestamp() for k in stuck)


def test_two_sweepers_take_each_delivery_once(make_runtime):
    runtime = make_runtime()
    expired = Ledger(runtime.redis, claim_deadline=timedelta(seconds=-1))
    lost = keys(120)
    expired.claim_many([(k, RULE, NOW) for k in lost], now=NOW)

    first = Sweeper(expired, runtime.actor, limit=50).sweep()
    second = Sweeper(expired, runtime.actor, limit=50).sweep()

    assert first.total == 120 and second.total == 0
    assert sorted(k for b in queued_batches(runtime) for k in b["keys"]) == sorted(lost)


def test_a_live_lease_is_not_taken_over(make_runtime):
    runtime = make_runtime()
    ledger = runtime.ledger
    (key,) = keys(1)
    ledger.claim_many([(key, RULE, NOW)], now=NOW)
    ledger.mark_queued([key])
    ledger.begin_many([key], now=utc_now(), owner="live worker")
    # Even a deadline index that says otherwise (a clock jump) does not take a live lease.
    runtime.redis.zadd(DEADLINE_INDEX_KEY, {ledger.redis_key(key): 0})

    assert Sweeper(ledger, runtime.actor).sweep().total == 0
    assert ledger.states([key]) == {key: "sending"}
    assert queued_batches(runtime) == []


def test_prometheus_gauges_show_work_by_state_and_what_is_stuck(make_runtime):
    runtime = make_runtime()
    lost = Ledger(runtime.redis, claim_deadline=timedelta(seconds=-60))
    lost.claim_many([(k, RULE, NOW) for k in keys(3)], now=NOW)
    runtime.ledger.claim_many([(k, RULE, NOW) for k in keys(5)[3:]], now=NOW)
    registry = CollectorRegistry()
    registry.register(
        StatusCollector(
            lambda: read_status(runtime.redis, queue_name="crm-messages", sweep_interval_s=1)
        )
    )
    text = generate_latest(registry).decode()
    assert "crm_redis_up 1.0" in text
    assert 'crm_work_deliveries{state="planned"} 5.0' in text
    assert 'crm_work_stuck{state="planned"} 3.0' in text
    assert "crm_work_stuck_total 3.0" in text
    assert "crm_workers_alive 0.0" in text
