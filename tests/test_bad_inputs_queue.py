"""The queue from ../shared/BAD_INPUTS.md: job arguments are occurrence keys and numbers only.

No address, name or rendered text travels through Redis in a job: the worker reloads the record
from the CRM at send time, so a message sitting in the queue holds no personal data.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from tests.conftest import REPO
from worker.constants import DRAMATIQ_NAMESPACE
from worker.localtime import parse_instant

#: Many birthdays (Feb 29 → Feb 28) and anniversaries fall due in the demo data at this instant.
BUSY = parse_instant("2026-02-28T23:30:00Z")


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def test_queued_jobs_carry_occurrence_keys_only(make_runtime, redis_client):
    runtime = make_runtime()
    report = runtime.scheduler.run_pass(BUSY)  # queued, no worker running
    assert len(report.queued) >= 10
    bodies = [
        body
        for key in redis_client.scan_iter(f"{DRAMATIQ_NAMESPACE}:*.msgs")
        for body in redis_client.hvals(key)
    ]
    assert bodies
    with (REPO / "examples" / "crm" / "customers.csv").open(encoding="utf-8") as handle:
        people = list(csv.DictReader(handle))
    queued = set(report.queued)
    carried = []
    for body in bodies:
        message = json.loads(body)
        arguments = strings_in(message["args"]) + strings_in(message["kwargs"])
        # Every text argument is one of the occurrence keys this pass claimed.
        assert set(arguments) <= queued, arguments
        carried += arguments
        # A few hundred bytes of envelope plus the keys: nothing rendered rides along.
        assert len(body) <= 500 + sum(len(a) + 4 for a in arguments)
        text = body.decode("utf-8")
        assert "@" not in text and "<" not in text
        assert not [p["last_name"] for p in people if p["last_name"] and p["last_name"] in text]
    assert sorted(carried) == sorted(queued)


def test_a_failing_over_or_full_redis_retries_the_batch_and_a_bug_does_not() -> None:
    """Dramatiq's retry rule: a batch that met a Redis failover (READONLY), a full Redis (OOM)
    or a lost connection is retried, never dead-lettered; any other error is not retried."""
    import dramatiq
    import redis

    from worker.delivery.actors import _redis_unreachable

    for exc in (
        redis.ConnectionError("gone"),
        redis.TimeoutError("slow"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.exceptions.OutOfMemoryError("OOM command not allowed"),
        redis.exceptions.TryAgainError("TRYAGAIN"),
        dramatiq.Retry("later"),
    ):
        assert _redis_unreachable(1_000, exc), exc
    assert not _redis_unreachable(0, redis.ResponseError("WRONGTYPE"))
    assert not _redis_unreachable(0, ValueError("malformed delivery batch"))
