"""Faults that used to strand messages for good, done to real processes: a ``crm-worker
scheduler`` and two ``crm-worker worker`` on a Redis of their own (AOF), delivering to the test
SMTP server. Redis shut down or SIGKILLed mid-delivery and restarted at once, one of two workers
SIGKILLed mid-batch, the scheduler SIGKILLed mid-pass: afterwards every message has arrived,
and duplicates (same Message-ID) stay within 2 %.

Dramatiq's own recovery is left at its defaults (a dead worker's messages come back after
minutes), so what heals is the ledger's sweeper. Its deadlines are shortened through settings
(a few seconds instead of a minute or two); waits are bounded, never timed.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller

from tests.conftest import SmtpSink
from tests.faultkit import (
    NOW,
    RedisProcess,
    crm_worker,
    free_port,
    kill_tree,
    wait_until,
    worker_env,
    write_crm,
)
from tests.test_faults import sending_env, settings_env
from worker.cli.common import CappedFormatter
from worker.localtime import utc_now
from worker.messages.mail import message_id_for
from worker.settings import load_settings

TOTAL = 1000
DUPLICATES_ALLOWED = TOTAL * 2 // 100

RULE = """\
id: birthday-greeting
description: Birthday e-card, due since midnight UTC today
trigger:
  birthday: {field: customer.birthday, at: "00:00"}
when: customer.email_opt_in
grace: 2d
send:
  - channel: email
    template: birthday
    to: customer.email
"""


def healing_env(tmp_path: Path, smtp: SmtpSink, redis_url: str) -> dict[str, str]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    # Not settings_env: Dramatiq's own recovery stays at its defaults, so what heals is the
    # sweeper.
    return worker_env(
        {
            **sending_env(tmp_path, smtp, rules),
            "CRM_REDIS_URL": redis_url,
            "CRM_SCHEDULER_INTERVAL_S": "1",
            "CRM_SCHEDULER_LOCK_TTL_S": "3",
            "CRM_CLAIM_DEADLINE_S": "2",
            "CRM_QUEUE_DEADLINE_S": "3",
            "CRM_SWEEP_INTERVAL_S": "0.5",
        }
    )


class Deployment:
    """The processes of one deployment, all stopped at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, role: str) -> subprocess.Popen[bytes]:
        process = crm_worker(role, env=self.env, cwd=self.tmp_path)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def deployment(tmp_path: Path, smtp_server: SmtpSink) -> Iterator[tuple[Deployment, RedisProcess]]:
    write_crm(tmp_path / "crm", TOTAL, birthday=utc_now().strftime("1990-%m-%d"))
    server = RedisProcess(tmp_path / "redis")
    server.start()
    running = Deployment(tmp_path, healing_env(tmp_path, smtp_server, server.url))
    yield running, server
    running.stop()
    server.kill()


def received(smtp: SmtpSink) -> Counter[str]:
    return Counter(smtp.message_ids())


def heal(smtp: SmtpSink, fault_at: float) -> float:
    """Wait (bounded) until every message arrived; seconds from the fault until then."""
    assert wait_until(lambda: len(received(smtp)) >= TOTAL, timeout_s=120, poll_s=0.1), (
        f"only {len(received(smtp))} of {TOTAL} arrived"
    )
    return time.monotonic() - fault_at


def settle_ledger(server: RedisProcess) -> Counter[str]:
    """The ledger's states once nothing is in flight any more (bounded wait)."""
    client = redis.Redis(port=server.port)

    def states() -> Counter[str]:
        keys = list(client.scan_iter(match="crm:delivery:*", count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "state")
            return Counter(v.decode() for v in pipe.execute() if v)

    wait_until(lambda: states() == Counter({"sent": TOTAL}), timeout_s=60, poll_s=0.2)
    try:
        return states()
    finally:
        client.close()


def report(name: str, smtp: SmtpSink, healed_s: float, capsys: Any, running: Deployment) -> int:
    """Print the figures; every duplicate must be among what ``crm-worker report`` calls
    possibly sent twice. Returns the number of duplicates."""
    counts = received(smtp)
    duplicates = sum(counts.values()) - len(counts)
    shown = subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", "report", "--json"],
        env=running.env,
        cwd=running.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    flagged = {
        line["key"]
        for line in map(json.loads, shown.stdout.splitlines())
        if line["kind"] == "possibly-twice"
    }
    with capsys.disabled():
        print(
            f"\n{name}: received {sum(counts.values())} for {TOTAL} deliveries, "
            f"missing {TOTAL - len(counts)}, duplicates {duplicates}, healed {healed_s:.1f} s "
            f"after the fault; reported as possibly sent twice: {len(flagged)}"
        )
    twice = {message_id for message_id, n in counts.items() if n > 1}
    assert twice <= {message_id_for(key, "shop.example.com") for key in flagged}
    return duplicates


@pytest.mark.parametrize("fault", ["shutdown", "kill"])
def test_redis_stopped_mid_delivery_and_restarted_at_once(deployment, smtp_server, fault, capsys):
    running, server = deployment
    running.start("worker")
    running.start("worker")
    running.start("scheduler")
    assert wait_until(lambda: len(smtp_server.received) >= TOTAL // 4, timeout_s=60)
    fault_at = time.monotonic()
    if fault == "shutdown":
        server.stop()  # SHUTDOWN: AOF flushed, every connection dropped
    else:
        server.kill()  # SIGKILL with appendfsync everysec: the last second of writes is lost
    server.start()
    assert len(smtp_server.received) < TOTAL, "delivery finished before the fault"

    healed_s = heal(smtp_server, fault_at)
    assert settle_ledger(server) == Counter({"sent": TOTAL})
    duplicates = report(f"Redis {fault} mid-delivery", smtp_server, healed_s, capsys, running)
    assert len(received(smtp_server)) == TOTAL
    assert duplicates <= DUPLICATES_ALLOWED


def test_one_of_two_workers_killed_mid_batch(deployment, smtp_server, capsys):
    running, server = deployment
    victim = running.start("worker")
    running.start("worker")
    running.start("scheduler")
    assert wait_until(lambda: len(smtp_server.received) >= TOTAL // 4, timeout_s=60)
    kill_tree(victim)  # the supervising process and its worker process
    fault_at = time.monotonic()
    victim.wait(timeout=10)
    assert len(smtp_server.received) < TOTAL, "delivery finished before the fault"

    healed_s = heal(smtp_server, fault_at)
    assert settle_ledger(server) == Counter({"sent": TOTAL})
    duplicates = report("one of two workers SIGKILLed", smtp_server, healed_s, capsys, running)
    assert duplicates <= DUPLICATES_ALLOWED


def test_scheduler_killed_mid_pass_is_finished_by_the_standby(deployment, smtp_server, capsys):
    running, server = deployment
    client = redis.Redis(port=server.port)
    leader = running.start("scheduler")
    # Killed as soon as its first claims are in the ledger, before the pass is through.
    assert wait_until(lambda: client.zcard("crm:deadlines") > 0, timeout_s=60, poll_s=0.005)
    leader.send_signal(signal.SIGKILL)
    fault_at = time.monotonic()
    leader.wait(timeout=10)
    claimed = sum(1 for _ in client.scan_iter(match="crm:delivery:*", count=1000))
    client.close()
    assert claimed < TOTAL, "the pass finished before the fault"
    running.start("worker")
    running.start("worker")
    running.start("scheduler")  # the standby: takes the lock once the dead leader's expires

    healed_s = heal(smtp_server, fault_at)
    assert settle_ledger(server) == Counter({"sent": TOTAL})
    duplicates = report(
        f"scheduler SIGKILLed mid-pass ({claimed} claimed)", smtp_server, healed_s, capsys, running
    )
    assert duplicates <= DUPLICATES_ALLOWED


def test_an_smtp_outage_ends_with_everything_sent_and_a_short_quiet_log(
    tmp_path, make_runtime, caplog
):
    total = 200
    write_crm(tmp_path / "crm", total)
    sink = SmtpSink("127.0.0.1", free_port())  # nothing listens yet: connections are refused
    runtime = make_runtime(load_settings(settings_env(tmp_path, sink)))
    caplog.set_level(logging.DEBUG, logger="worker")
    worker = runtime.start_worker()
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    try:
        queued = runtime.scheduler.run_pass(NOW).queued
        assert wait_until(lambda: runtime.pause.remaining(utc_now()) is not None, timeout_s=30)
        time.sleep(1)  # the outage lasts a few backoff steps
        controller.start()
        assert wait_until(
            lambda: set(runtime.ledger.states(queued).values()) == {"sent"}, timeout_s=60
        )
    finally:
        worker.stop()
        controller.stop()
    assert len(set(sink.message_ids())) == total == len(sink.received)
    ours = [r for r in caplog.records if r.name.startswith("worker")]
    shown = [r for r in ours if r.levelno >= logging.INFO]
    # Per message: DEBUG only. At INFO and above: a few lines about the outage, not hundreds.
    assert sum(1 for r in ours if r.levelno == logging.DEBUG) >= total
    assert len(shown) <= 20, [r.getMessage() for r in shown]
    # The outage is two lines: held off when it starts, resumed when it is over.
    messages = [r.getMessage() for r in shown]
    assert sum(m.startswith("sending held off") for m in messages) == 1, messages
    assert sum(m.startswith("sending resumed") for m in messages) == 1, messages
    formatter = CappedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    assert all(len(line) <= 300 for r in ours for line in formatter.format(r).splitlines())
