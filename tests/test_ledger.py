"""Several outcomes recorded in one round trip stay separate atomic steps: each needs its own
lease, each gets its delivery-log entry, and one that lost its lease does not stop the rest."""

from __future__ import annotations

import pytest
import redis

from tests.faultkit import NOW
from worker.delivery_log import LogEntry
from worker.ledger import Finish, Ledger
from worker.localtime import utc_now


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
