"""Transient failures are retried with backoff, but never past the rule's grace or the attempt
limit; then the delivery is failed with the reason. Metrics show every outcome."""

from __future__ import annotations

import time
import urllib.request
from datetime import timedelta

from tests.faultkit import NOW, free_port, write_crm
from tests.test_faults import settings_env
from worker.constants import MAX_DELIVERY_ATTEMPTS
from worker.delivery.batch import deliver_one
from worker.delivery.outcome import retry_delay
from worker.localtime import parse_instant, utc_now
from worker.settings import load_settings

DUE = parse_instant("2026-03-14T09:00:00Z")  # the birthday rule's 09:00 UTC; grace 1d


def one_queued_key(tmp_path, smtp_server, make_runtime, **env):
    write_crm(tmp_path / "crm", 1)
    runtime = make_runtime(load_settings(settings_env(tmp_path, smtp_server, **env)))
    (key,) = runtime.scheduler.run_pass(NOW).queued
    return runtime, key


def test_a_retry_that_would_land_after_the_grace_fails_instead(tmp_path, smtp_server, make_runtime):
    smtp_server.reply = "451 4.3.0 Try again later"
    runtime, key = one_queued_key(tmp_path, smtp_server, make_runtime)
    early = deliver_one(runtime.deliverer, key, as_of=NOW, enqueued_at=utc_now())
    assert early.outcome == "retry" and early.retry_after == timedelta(seconds=0.2)

    time.sleep(0.3)  # the retry comes when its backoff asked for it, not before
    last_moment = DUE + timedelta(days=1) - timedelta(seconds=0.1)
    late = deliver_one(runtime.deliverer, key, as_of=last_moment, enqueued_at=utc_now())
    assert late.outcome == "failed"
    entry = runtime.ledger.get(key)
    assert entry["state"] == "failed" and "grace" in entry["reason"] and "451" in entry["reason"]
    assert smtp_server.data_attempts == 2 and smtp_server.received == []


def test_the_attempt_limit_fails_the_delivery_with_the_reason(tmp_path, smtp_server, make_runtime):
    smtp_server.reply = "421 4.4.2 Connection dropped"
    runtime, key = one_queued_key(tmp_path, smtp_server, make_runtime)
    # Each retry when its backoff is over (an hour later each: past the longest backoff).
    later = [utc_now() + timedelta(hours=n) for n in range(MAX_DELIVERY_ATTEMPTS)]
    outcomes = [
        deliver_one(runtime.deliverer, key, as_of=NOW, enqueued_at=at, now=at).outcome
        for at in later
    ]
    assert outcomes == ["retry"] * (MAX_DELIVERY_ATTEMPTS - 1) + ["failed"]
    assert f"gave up after {MAX_DELIVERY_ATTEMPTS} attempts" in runtime.ledger.get(key)["reason"]
    assert (
        deliver_one(runtime.deliverer, key, as_of=NOW, enqueued_at=utc_now()).outcome == "duplicate"
    )
    assert smtp_server.data_attempts == MAX_DELIVERY_ATTEMPTS


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    first = timedelta(seconds=30)
    delays = [retry_delay(n, first=first) for n in range(1, 8)]
    assert delays[:4] == [first, first * 2, first * 4, first * 8]
    assert delays[-1] == timedelta(minutes=30)


def test_metrics_count_outcomes_per_rule_and_channel(tmp_path, smtp_server, make_runtime):
    port = free_port()
    runtime, key = one_queued_key(tmp_path, smtp_server, make_runtime, CRM_METRICS_PORT=str(port))
    worker = runtime.start_worker()
    try:
        assert runtime.wait_for([key], timeout_s=30)[key] == "sent"
    finally:
        worker.stop()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sent = 'crm_deliveries_total{channel="email",outcome="sent",rule="birthday-greeting"}'
    assert sent in text
    assert "crm_smtp_send_seconds_count" in text
    assert 'crm_queue_messages_total{outcome="done",queue="crm-messages"}' in text
