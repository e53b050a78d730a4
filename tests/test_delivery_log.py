"""The delivery log and the suppression list in Redis, read back as an operator sees them."""

from __future__ import annotations

from datetime import timedelta

from worker.localtime import parse_instant
from worker.records.delivery_log import DeliveryLog, LogEntry, summarize
from worker.records.suppression import SuppressionList

T0 = parse_instant("2026-03-14T09:00:00Z")


def entry(minutes: int, status: str, key: str, rule: str = "birthday", **kw: str) -> LogEntry:
    return LogEntry(T0 + timedelta(minutes=minutes), status, rule, key, **kw)


def test_summary_counts_each_delivery_by_its_latest_outcome():
    summary = summarize(
        [
            entry(0, "failed", "a", reason="451 then gave up"),
            entry(1, "sent", "b"),
            entry(2, "unknown", "c", reason="connection lost after DATA"),
            entry(3, "skipped", "d", rule="thanks", reason="condition is false"),
            entry(9, "sent", "a"),  # retried on request, then sent
        ]
    )
    assert summary.counts == {
        ("birthday", "sent"): 2,
        ("birthday", "unknown"): 1,
        ("thanks", "skipped"): 1,
    }
    assert [(e.key, e.reason) for e in summary.problems] == [("c", "connection lost after DATA")]


def test_the_log_reads_back_from_an_instant_and_per_rule(redis_client):
    log = DeliveryLog(redis_client)
    log.record(entry(0, "sent", "a", channel="email", recipient="a@x.com", reply="250 OK"))
    log.record(entry(5, "failed", "b", reason="550 5.1.1", reply="5.1.1 user unknown"))
    log.record(entry(10, "sent", "c", rule="thanks"))
    assert [e.key for e in log.read()] == ["a", "b", "c"]
    assert [e.key for e in log.read(since=T0 + timedelta(minutes=1))] == ["b", "c"]
    assert [e.key for e in log.read(rule="thanks")] == ["c"]
    first = next(log.read())
    assert (first.at, first.recipient, first.reply, first.channel) == (
        T0,
        "a@x.com",
        "250 OK",
        "email",
    )
    assert first.as_json()["at"] == "2026-03-14T09:00:00Z"


def test_the_log_is_capped(redis_client):
    log = DeliveryLog(redis_client, maxlen=100)
    for n in range(1_000):
        log.record(entry(n, "sent", f"k{n}"))
    kept = list(log.read())
    assert len(kept) < 1_000 and kept[-1].key == "k999"


def test_suppression_ignores_case_and_keeps_the_reason(redis_client):
    suppression = SuppressionList(redis_client)
    suppression.add("Gone@Example.com", "550 5.1.1 user unknown", now=T0, key="k1")
    assert suppression.reason("gone@example.COM") == "550 5.1.1 user unknown"
    assert [(s.address, s.key, s.at) for s in suppression] == [("gone@example.com", "k1", T0)]
    assert suppression.remove("GONE@example.com") and not suppression.remove("gone@example.com")
    assert suppression.reason("gone@example.com") is None and len(suppression) == 0
