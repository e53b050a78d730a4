"""The fault suite: crashes, restarts and a flaky relay, against real Redis and a real SMTP
server. Each test counts what the server received by Message-ID (one per delivery key, identical
on every retry), so a duplicate cannot hide.

Timings are shortened through settings, never by sleeping through the defaults: retry backoff
0.2 s (CRM_RETRY_BACKOFF_S), send lease 3 s (CRM_SEND_LEASE_S), and Dramatiq's dead-worker
detection 2 s with maintenance on every broker command (CRM_BROKER_HEARTBEAT_TIMEOUT_S,
CRM_BROKER_MAINTENANCE_CHANCE) instead of 60 s and ~0.1 % of commands.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import REPO, SmtpSink
from tests.faultkit import (
    NOW,
    RedisProcess,
    crm_worker,
    free_port,
    kill_tree,
    wait_until,
    worker_env,
)
from tests.faultkit import write_crm as _write_crm
from worker.channels import Outgoing, SmtpChannel
from worker.constants import DRAMATIQ_NAMESPACE
from worker.delivery.batch import deliver_one
from worker.errors import TransientDeliveryError
from worker.localtime import utc_now
from worker.runtime import Runtime
from worker.settings import load_settings

THREADS = 4


def sending_env(tmp_path: Path, smtp: SmtpSink, rules: Path) -> dict[str, str]:
    """What every fault test's worker is set to: the CRM under ``tmp_path``, the sample
    templates, the test SMTP server, retries and leases shortened."""
    return {
        "CRM_DATA_DIR": str(tmp_path / "var"),
        "CRM_SOURCE": str(tmp_path / "crm"),
        "CRM_RULES_DIR": str(rules),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
        "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
        "CRM_SMTP_HOST": smtp.host,
        "CRM_SMTP_PORT": str(smtp.port),
        "CRM_SMTP_SECURITY": "none",
        "CRM_WORKER_THREADS": str(THREADS),
        # One worker process of THREADS threads with one SMTP connection each: the layout the
        # duplicate bounds are stated for (the defaults are one process per CPU, one thread
        # with 8 connections).
        "CRM_WORKER_PROCESSES": "1",
        "CRM_SMTP_CONNECTIONS": "1",
        "CRM_RETRY_BACKOFF_S": "0.2",
        "CRM_SEND_LEASE_S": "3",
    }


def settings_env(tmp_path: Path, smtp: SmtpSink, **extra: str) -> dict[str, str]:
    rules = tmp_path / "rules"
    if not rules.exists():
        rules.mkdir()
        shutil.copy(REPO / "rules" / "birthday-greeting.yaml", rules)
    env = {
        **sending_env(tmp_path, smtp, rules),
        "CRM_BROKER_HEARTBEAT_TIMEOUT_S": "2",
        "CRM_BROKER_MAINTENANCE_CHANCE": "1000000",
    }
    env.update(extra)
    return env


def write_crm(tmp_path: Path, count: int) -> list[str]:
    return _write_crm(tmp_path / "crm", count)


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Any]:
    """Start Redis servers of our own (``fsync`` mode as given); all are killed at the end."""
    servers: list[RedisProcess] = []

    def start(fsync: str = "everysec") -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis{len(servers)}", fsync=fsync)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def own_redis(make_redis: Any) -> RedisProcess:
    return make_redis()  # type: ignore[no-any-return]


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for runtime in made:
        runtime.close()


@pytest.fixture
def runtime_for(make_runtime: Any, runtimes: list[Runtime]) -> Any:
    """A Runtime on ``env``: on the test Redis, or on ``env['CRM_REDIS_URL']`` when given."""

    def build(env: dict[str, str]) -> Runtime:
        settings = load_settings(env)
        if settings.redis_url:
            runtime = Runtime(settings)
            runtimes.append(runtime)
            return runtime
        return make_runtime(settings)  # type: ignore[no-any-return]

    return build


def counts(sink: SmtpSink) -> Counter[str]:
    return Counter(sink.message_ids())


def wait_states(runtime: Runtime, keys: list[str], done: set[str], timeout_s: float) -> dict:
    wait_until(lambda: set(runtime.ledger.states(keys).values()) <= done, timeout_s=timeout_s)
    return runtime.ledger.states(keys)


def test_sigkill_mid_batch_loses_nothing_and_duplicates_at_most_the_crash_window(
    tmp_path, smtp_server, own_redis, runtime_for, capsys
):
    total = 500
    write_crm(tmp_path, total)
    env = settings_env(tmp_path, smtp_server, CRM_REDIS_URL=own_redis.url)
    runtime = runtime_for(env)
    queued = runtime.scheduler.run_pass(NOW).queued
    assert len(queued) == total

    first = crm_worker("worker", env=worker_env(env), cwd=tmp_path)
    try:
        assert wait_until(lambda: len(smtp_server.received) >= 100, timeout_s=60)
        kill_tree(first)
        first.wait(timeout=10)
    finally:
        first.kill()
    time.sleep(0.3)  # let the server finish a message whose last bytes were already sent
    at_kill = len(smtp_server.received)
    states = Counter(runtime.ledger.states(queued).values())
    in_crash_window = at_kill - states["sent"]  # the server said 250, the ledger never heard
    assert at_kill < total, "the worker finished before it was killed; nothing was tested"

    second = crm_worker("worker", env=worker_env(env), cwd=tmp_path)
    try:
        final = wait_states(runtime, queued, {"sent"}, timeout_s=120)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert Counter(final.values()) == Counter({"sent": total})
    received = counts(smtp_server)
    assert len(received) == total  # every delivery arrived
    duplicates = sum(received.values()) - total
    # Only a message between the server's 250 and the ledger write goes twice: at most one per
    # worker thread (each thread sends one message at a time).
    assert duplicates == in_crash_window <= THREADS
    with capsys.disabled():
        print(
            f"\nSIGKILL test: killed after {at_kill} of {total} received "
            f"(ledger then: {dict(states)}); duplicates after restart: {duplicates}"
        )


def test_relay_refusing_connections_then_recovering_delivers_all_once(tmp_path, runtime_for):
    total = 20
    write_crm(tmp_path, total)
    sink = SmtpSink("127.0.0.1", free_port())  # nothing listens yet: connections are refused
    runtime = runtime_for(settings_env(tmp_path, sink))
    worker = runtime.start_worker()
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    try:
        queued = runtime.scheduler.run_pass(NOW).queued
        assert wait_until(
            lambda: "retrying" in runtime.ledger.states(queued).values(), timeout_s=30
        )
        controller.start()
        final = wait_states(runtime, queued, {"sent"}, timeout_s=60)
    finally:
        worker.stop()
        controller.stop()
    assert Counter(final.values()) == Counter({"sent": total})
    assert set(counts(sink).values()) == {1} and len(counts(sink)) == total
    # The outage cost no attempts: workers held off together instead of burning retries.
    assert {runtime.ledger.get(key)["attempts"] for key in queued} == {"1"}


def test_unknown_recipients_fail_once_are_suppressed_and_the_rest_is_delivered(
    tmp_path, any_smtp_server, runtime_for
):
    addresses = write_crm(tmp_path, 10)
    gone = addresses[:3]
    for address in gone:
        any_smtp_server.refuse_rcpt[address] = f"550 5.1.1 <{address}>: Recipient address rejected"
    runtime = runtime_for(settings_env(tmp_path, any_smtp_server))
    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"sent": 7, "failed": 3})
    assert sorted(r.recipients[0] for r in any_smtp_server.received) == sorted(addresses[3:])
    assert all(any_smtp_server.rcpt_attempts[address] == 1 for address in gone)  # no retries
    for address in gone:
        assert "5.1.1" in (runtime.suppression.reason(address) or "")
    failed = [e for e in runtime.delivery_log.read() if e.status == "failed"]
    assert sorted(e.recipient for e in failed) == sorted(gone)
    assert all("5.1.1" in e.reply and "suppressed" in e.reason for e in failed)


@pytest.mark.parametrize("fault", ["451 4.7.1 Greylisted, try again later", "421 4.3.2 Busy"])
def test_temporary_refusals_are_retried_with_backoff_then_delivered(
    tmp_path, any_smtp_server, runtime_for, fault
):
    total = 6
    write_crm(tmp_path, total)
    any_smtp_server.data_replies = [fault] * 8
    runtime = runtime_for(settings_env(tmp_path, any_smtp_server))
    worker = runtime.start_worker()
    try:
        queued = runtime.scheduler.run_pass(NOW).queued
        final = wait_states(runtime, queued, {"sent"}, timeout_s=60)
    finally:
        worker.stop()
    assert Counter(final.values()) == Counter({"sent": total})
    assert set(counts(any_smtp_server).values()) == {1} and len(counts(any_smtp_server)) == total
    assert any_smtp_server.data_attempts == total + 8
    attempts = [int(runtime.ledger.get(key)["attempts"]) for key in queued]
    assert max(attempts) > 1 and sum(attempts) == total + 8


@pytest.mark.parametrize(("fsync", "how"), [("everysec", "restart"), ("always", "crash")])
def test_redis_restart_between_pass_and_worker_loses_nothing(
    tmp_path, smtp_server, runtime_for, make_redis, fsync, how
):
    total = 120
    write_crm(tmp_path, total)
    own_redis = make_redis(fsync)
    env = settings_env(tmp_path, smtp_server, CRM_REDIS_URL=own_redis.url)
    scheduler_side = runtime_for(env)
    queued = scheduler_side.scheduler.run_pass(NOW).queued
    assert len(queued) == total
    scheduler_side.close()
    if how == "restart":
        own_redis.stop()  # SHUTDOWN writes the AOF out
    else:
        # SIGKILL: with appendfsync always every acknowledged write is on disk. (With everysec
        # Redis may hold back AOF writes while a background fsync runs, so a crash can lose
        # the last seconds; see the README.)
        own_redis.kill()
    own_redis.start()

    worker_side = runtime_for(env)
    assert set(worker_side.ledger.states(queued).values()) == {"queued"}
    worker = worker_side.start_worker()
    try:
        final = wait_states(worker_side, queued, {"sent"}, timeout_s=60)
    finally:
        worker.stop()
    assert Counter(final.values()) == Counter({"sent": total})
    assert set(counts(smtp_server).values()) == {1} and len(counts(smtp_server)) == total
    # The next pass the same day finds every occurrence already claimed.
    assert worker_side.scheduler.run_pass(NOW).queued == []


def test_two_run_once_processes_started_together_send_each_message_once(
    tmp_path, smtp_server, own_redis
):
    total = 150
    write_crm(tmp_path, total)
    env = worker_env(settings_env(tmp_path, smtp_server, CRM_REDIS_URL=own_redis.url))
    now = NOW.isoformat()
    first = crm_worker("run", "--once", "--now", now, env=env, cwd=tmp_path)
    second = crm_worker("run", "--once", "--now", now, env=env, cwd=tmp_path)
    assert first.wait(timeout=120) == 0
    assert second.wait(timeout=120) == 0
    received = counts(smtp_server)
    assert len(received) == total and set(received.values()) == {1}


def test_opt_out_or_suppression_after_enqueue_is_skipped_with_the_reason(
    tmp_path, smtp_server, runtime_for
):
    addresses = write_crm(tmp_path, 5)
    runtime = runtime_for(settings_env(tmp_path, smtp_server))
    queued = runtime.scheduler.run_pass(NOW).queued
    # After the scheduler queued them: customer 1 opts out in the CRM, customer 2 bounces
    # elsewhere (an operator suppresses the address).
    customers = tmp_path / "crm" / "customers.csv"
    lines = customers.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace(",true,", ",false,")
    customers.write_text("".join(lines), encoding="utf-8")
    runtime.suppression.add(addresses[1], "hard bounce reported by the ESP", now=NOW)

    worker = runtime.start_worker()
    try:
        final = wait_states(runtime, queued, {"sent", "skipped"}, timeout_s=30)
    finally:
        worker.stop()
    assert Counter(final.values()) == Counter({"sent": 3, "skipped": 2})
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(addresses[2:])
    reasons = {e.key.split(":")[2]: e.reason for e in runtime.delivery_log.read()}
    assert "condition is false" in reasons["1"]
    assert "suppressed: hard bounce" in reasons["2"]


def test_poison_message_is_dead_lettered_and_the_worker_keeps_working(
    tmp_path, smtp_server, runtime_for
):
    write_crm(tmp_path, 3)
    runtime = runtime_for(settings_env(tmp_path, smtp_server))
    actor = runtime.actor.actor
    actor.send_with_options(kwargs={"keys": "not a list", "as_of": 0, "enqueued_at": 0})
    actor.send_with_options(kwargs={"unexpected": True})
    worker = runtime.start_worker()
    try:
        queued = runtime.scheduler.run_pass(NOW).queued
        final = wait_states(runtime, queued, {"sent"}, timeout_s=30)
        dead_letters = f"{DRAMATIQ_NAMESPACE}:{runtime.settings.queue_name}.XQ"
        assert wait_until(lambda: runtime.redis.zcard(dead_letters) == 2, timeout_s=30)
    finally:
        worker.stop()
    assert Counter(final.values()) == Counter({"sent": 3})
    assert len(counts(smtp_server)) == 3


def test_connection_lost_after_the_final_dot_is_unknown_and_resent_only_on_request(
    tmp_path, any_smtp_server, runtime_for
):
    write_crm(tmp_path, 1)
    any_smtp_server.drop_after_data = 1
    runtime = runtime_for(settings_env(tmp_path, any_smtp_server))
    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"unknown": 1})
    (key,) = summary.report.queued
    assert "may have been delivered" in runtime.ledger.get(key)["reason"]
    assert runtime.run_once(NOW).report.queued == []  # not resent by the next pass
    assert len(any_smtp_server.received) == 1
    assert runtime.suppression.reason("customer1@example.com") is None

    worker = runtime.start_worker()
    try:
        assert runtime.retry_failed(rule_id="birthday-greeting", now=NOW) == [key]
        final = wait_states(runtime, [key], {"sent"}, timeout_s=30)
    finally:
        worker.stop()
    assert final[key] == "sent"
    # The operator chose to resend: the same Message-ID, so the inbox can fold the two.
    assert counts(any_smtp_server) == Counter({any_smtp_server.message_ids()[0]: 2})
    assert runtime.retry_failed() == []  # nothing left to retry


def test_policy_refusal_pauses_sending_and_never_suppresses(tmp_path, any_smtp_server, runtime_for):
    write_crm(tmp_path, 1)
    any_smtp_server.data_replies = ["550 5.7.1 Message rejected: missing Message-ID"]
    runtime = runtime_for(settings_env(tmp_path, any_smtp_server))
    summary = runtime.run_once(NOW)
    (key,) = summary.report.queued
    entry = runtime.ledger.get(key)
    assert entry["state"] == "retrying" and "5.7.1" in entry["reason"]
    assert entry["attempts"] == "0"  # a pause burns no attempt
    assert runtime.pause.remaining(utc_now()) is not None
    assert len(runtime.suppression) == 0
    # While paused, a redelivery does not even try the relay.
    result = deliver_one(runtime.deliverer, key, as_of=NOW, enqueued_at=utc_now())
    assert result.outcome == "paused" and any_smtp_server.data_attempts == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
def test_authentication_failure_pauses_sending_and_never_suppresses(
    tmp_path, runtime_for, pipelining
):
    from aiosmtpd.smtp import AuthResult

    write_crm(tmp_path, 1)
    sink = SmtpSink("127.0.0.1", free_port(), pipelining=pipelining)
    controller = Controller(
        sink,
        hostname=sink.host,
        port=sink.port,
        authenticator=lambda *_: AuthResult(success=False, handled=False),
        auth_require_tls=False,
    )
    controller.start()
    try:
        env = settings_env(
            tmp_path, sink, CRM_SMTP_USERNAME="crm", CRM_SMTP_PASSWORD="wrong-secret"
        )
        runtime = runtime_for(env)
        summary = runtime.run_once(NOW)
    finally:
        controller.stop()
    (key,) = summary.report.queued
    entry = runtime.ledger.get(key)
    assert entry["state"] == "retrying" and "535" in entry["reason"]
    assert "wrong-secret" not in entry["reason"]
    assert runtime.pause.remaining(utc_now()) is not None
    assert len(runtime.suppression) == 0 and sink.received == []


def _mail(n: int) -> Outgoing:
    message_id = f"<idle-{n}@shop.example.com>"
    data = f"Subject: idle {n}\r\nMessage-ID: {message_id}\r\n\r\nhello\r\n".encode()
    return Outgoing(f"k{n}", "email", "crm@shop.example.com", "a@example.com", message_id, data)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
@pytest.mark.parametrize("probe", [True, False])
def test_a_connection_the_server_dropped_while_idle(make_settings, probe, pipelining):
    sink = SmtpSink("127.0.0.1", free_port(), pipelining=pipelining)
    controller = Controller(sink, hostname=sink.host, port=sink.port, timeout=0.3)
    controller.start()
    settings = make_settings(
        CRM_SMTP_HOST=sink.host,
        CRM_SMTP_PORT=str(sink.port),
        CRM_SMTP_SECURITY="none",
        CRM_SMTP_IDLE_CHECK_S="0.05" if probe else "3600",
    )
    channel = SmtpChannel(settings)
    try:
        channel.send(_mail(1))
        time.sleep(0.8)  # the server drops the idle connection (its timeout is 0.3 s)
        if probe:
            # Probed with NOOP, found closed, reopened: the message goes out.
            channel.send(_mail(2))
            assert sink.message_ids() == ["<idle-1@shop.example.com>", "<idle-2@shop.example.com>"]
        else:
            # Not probed: lost before DATA, so nothing can have arrived; safe to retry.
            with pytest.raises(TransientDeliveryError, match="connection lost"):
                channel.send(_mail(2))
            assert len(sink.received) == 1
            channel.send(_mail(2))  # the next attempt opens a new connection
            assert len(sink.received) == 2
    finally:
        channel.close()
        controller.stop()
