"""The CRM learns every suppression change: a signed event per change, posted to a real HTTP
receiver that checks the signature as a CRM does, from every path that changes the list
(one-click and its way back, a relay's 5.1.1, the mailbox's bounces and complaints, an
operator's `suppress add|remove`), with the CRM down and coming back."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests import feedback_samples as samples
from tests.crm_receiver import CrmReceiver
from tests.faultkit import RedisProcess, wait_until, worker_env
from tests.faultkit import crm_worker as start_crm_worker
from tests.test_cli import base_env, crm_worker
from tests.test_intake import serve
from tests.test_intake_hardening import intake_process
from tests.test_unsubscribe_pages import BASE, FORM, ONE_CLICK, SECRET, write_shop
from worker.constants import SUPPRESSION_EVENTS_KEY, SUPPRESSION_EVENTS_RETRY_KEY
from worker.delivery.feedback import classify
from worker.delivery.mailbox import FeedbackActions, SoftBounces
from worker.errors import ConfigError
from worker.localtime import utc_now
from worker.messages.unsubscribe import sign_address
from worker.records.suppression import SuppressionList
from worker.records.suppression_events import SuppressionOutbox
from worker.runtime import Runtime
from worker.settings import load_settings
from worker.web.intake import IntakeAuth

WEBHOOK_SECRET = "crm events secret 0123456789"


@pytest.fixture
def receiver() -> Iterator[CrmReceiver]:
    crm = CrmReceiver(WEBHOOK_SECRET.encode())
    crm.start()
    yield crm
    crm.stop()


@pytest.fixture
def shop(
    tmp_path: Path, make_runtime, make_settings, smtp_env, receiver
) -> Iterator[tuple[str, Runtime]]:  # type: ignore[no-untyped-def]
    """The intake serving the unsubscribe pages, and a runtime that sends mail to the SMTP
    server and suppression events to the receiver."""
    crm, rules = write_shop(tmp_path)
    settings = make_settings(
        CRM_SOURCE=str(crm),
        CRM_RULES_DIR=str(rules),
        CRM_UNSUBSCRIBE_SECRET=SECRET,
        CRM_UNSUBSCRIBE_URL=BASE,
        CRM_INTAKE_TOKEN="token-0123456789abcdef",
        CRM_CRM_EVENTS_URL=receiver.url,
        CRM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        **smtp_env,
    )
    runtime = make_runtime(settings)
    yield from ((url, runtime) for url in serve(runtime, IntakeAuth.from_settings(settings, "::1")))


def _post_all(runtime: Runtime, now: datetime | None = None) -> None:
    assert runtime.crm_events is not None
    report = runtime.crm_events.post(now or utc_now())
    assert report.failed is None, report


def test_one_click_and_the_way_back_reach_the_crm_signed_in_order(shop, receiver):
    url, runtime = shop
    token = sign_address(SECRET.encode(), "ana@example.com", "marketing", "es")
    link = f"{url}/u/{token}"

    done = httpx.post(link, headers=FORM, timeout=10, **ONE_CLICK)
    assert done.status_code == 200
    # The answer did not wait on the CRM: the event waits in the outbox, beside the change.
    assert receiver.events == []
    assert len(SuppressionOutbox(runtime.redis)) == 1
    # The mail provider repeats the request: no change, no second event.
    assert httpx.post(link, headers=FORM, timeout=10, **ONE_CLICK).status_code == 200
    assert len(SuppressionOutbox(runtime.redis)) == 1
    back = httpx.post(f"{link}/undo", headers=FORM, timeout=10, **ONE_CLICK)
    assert back.status_code == 200

    runtime.sweeper.sweep()  # what every worker and scheduler does every few seconds
    assert receiver.forged == 0
    assert receiver.types() == [
        ("customer.unsubscribed", "ana@example.com"),
        ("customer.resubscribed", "ana@example.com"),
    ]
    left, came_back = receiver.events
    assert set(left) == {"id", "type", "address", "scope", "reason", "source", "at", "delivery"}
    assert left["scope"] == came_back["scope"] == "marketing"
    assert left["source"] == came_back["source"] == "one-click"
    assert left["reason"] == "unsubscribed (one-click)"
    assert came_back["reason"] == "re-subscribed (one-click)"
    assert left["delivery"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", left["at"])
    assert abs(datetime.fromisoformat(left["at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    # Each request carries the event id as its Idempotency-Key; ids are unique.
    assert receiver.keys == [left["id"], came_back["id"]] and left["id"] != came_back["id"]
    assert len(SuppressionOutbox(runtime.redis)) == 0


def test_a_forged_token_is_no_event(shop, receiver):
    url, runtime = shop
    forged = sign_address(b"not our secret", "ana@example.com", "marketing", "es")
    answer = httpx.post(f"{url}/u/{forged}", headers=FORM, timeout=10, **ONE_CLICK)
    assert answer.status_code == 200  # the same answer: no oracle
    assert runtime.suppression.entry("ana@example.com") is None
    assert len(SuppressionOutbox(runtime.redis)) == 0


def test_the_crm_down_then_failing_then_back_gets_each_event_once_with_its_id(shop, receiver):
    url, runtime = shop
    receiver.stop()  # the CRM is down
    for address in ("ana@example.com", "bob@example.com"):
        token = sign_address(SECRET.encode(), address, "marketing", "en")
        assert httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK).is_success
    (first, second) = SuppressionOutbox(runtime.redis).pending(10)
    events = runtime.crm_events
    assert events is not None

    now = utc_now()
    down = events.post(now)
    assert down.posted == 0 and down.failed and "ConnectError" in down.failed
    assert runtime.redis.hget(SUPPRESSION_EVENTS_RETRY_KEY, "attempts") == b"1"
    # Within the backoff nothing is tried; after it, the next failure doubles the wait.
    assert events.post(now + timedelta(seconds=1)).failed is None
    assert events.post(now + timedelta(seconds=3)).failed
    state = SuppressionOutbox(runtime.redis).retry_state()
    assert state.attempts == 2 and state.next_at is not None
    assert timedelta(seconds=6) < state.next_at - now < timedelta(seconds=8)

    receiver.start()
    receiver.failing = 503  # up, but failing
    failing = events.post(now + timedelta(seconds=10)).failed
    assert failing is not None and "answered 503" in failing
    assert receiver.refused == 1 and receiver.events == []

    receiver.failing = None  # back
    back = events.post(now + timedelta(minutes=10))
    assert back.posted == 2 and back.failed is None
    assert [e["id"] for e in receiver.events] == [first.id, second.id]
    assert receiver.types() == [
        ("customer.unsubscribed", "ana@example.com"),
        ("customer.unsubscribed", "bob@example.com"),
    ]
    assert runtime.redis.exists(SUPPRESSION_EVENTS_RETRY_KEY) == 0
    # Nothing left: later sweeps post nothing again.
    assert events.post(now + timedelta(minutes=20)).posted == 0
    assert len(receiver.events) == 2


def test_status_shows_events_waiting_for_a_failing_crm(tmp_path, receiver, redis_client):
    env = base_env(tmp_path) | {
        "CRM_CRM_EVENTS_URL": receiver.url,
        "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    runtime = Runtime(load_settings(env))
    try:
        runtime.suppression.add("s@example.com", "asked", now=utc_now())
        receiver.failing = 500
        assert runtime.crm_events is not None
        runtime.crm_events.post(utc_now())
        failing = crm_worker("status", env=env, cwd=tmp_path)
        # The next try is 2 s later: by the time the command prints, it may be due.
        assert "CRM events 1 waiting: the CRM failed 1 time(s) in a row, next try" in (
            failing.stdout
        )
        receiver.failing = None
        runtime.crm_events.post(utc_now() + timedelta(minutes=10))
    finally:
        runtime.close()
    assert "CRM events 0 waiting\n" in crm_worker("status", env=env, cwd=tmp_path).stdout


def test_a_crm_refusing_an_event_keeps_it_until_the_crm_takes_it(shop, receiver, caplog):
    _, runtime = shop
    runtime.suppression.add("x@example.com", "asked by phone", now=utc_now())
    receiver.failing = 422
    events = runtime.crm_events
    assert events is not None
    report = events.post(utc_now())
    assert report.failed and "refused" in report.failed
    assert "fix the endpoint of CRM_CRM_EVENTS_URL" in caplog.text
    assert len(SuppressionOutbox(runtime.redis)) == 1
    receiver.failing = None
    assert events.post(utc_now() + timedelta(minutes=10)).posted == 1
    assert receiver.types() == [("address.suppressed", "x@example.com")]


def test_two_processes_posting_at_once_post_each_event_once(make_runtime, make_settings, receiver):
    settings = make_settings(CRM_CRM_EVENTS_URL=receiver.url, CRM_WEBHOOK_SECRET=WEBHOOK_SECRET)
    first, second = make_runtime(settings), make_runtime(settings)
    now = utc_now()
    for n in range(60):
        first.suppression.add(f"p{n}@example.com", "asked", now=now)
    barrier = threading.Barrier(2)

    def drain(runtime: Runtime) -> None:
        barrier.wait()
        assert runtime.crm_events is not None
        while len(SuppressionOutbox(runtime.redis)):
            runtime.crm_events.post(utc_now())

    threads = [threading.Thread(target=drain, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    addresses = [address for _, address in receiver.types()]
    assert addresses == [f"p{n}@example.com" for n in range(60)]  # each once, in order


def test_a_relay_refusing_the_address_is_a_bounce_event_naming_the_delivery(
    shop, smtp_server, receiver
):
    _, runtime = shop
    smtp_server.refuse_rcpt["bob@example.com"] = "550 5.1.1 <bob@example.com>: user unknown"
    runtime.run_once(datetime(2026, 3, 14, 9, 30, tzinfo=UTC))
    _post_all(runtime)
    (bounced,) = receiver.events
    assert bounced["type"] == "address.bounced" and bounced["address"] == "bob@example.com"
    assert bounced["scope"] == "all" and bounced["source"] == "smtp"
    assert "5.1.1" in bounced["reason"]
    assert bounced["delivery"].startswith("birthday:") and bounced["delivery"].endswith("/email")


def test_mailbox_bounces_complaints_and_unsubscribes_are_events(
    make_runtime, make_settings, receiver
):
    settings = make_settings(
        CRM_CRM_EVENTS_URL=receiver.url,
        CRM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        CRM_UNSUBSCRIBE_SECRET=SECRET,
    )
    runtime = make_runtime(settings)
    actions = FeedbackActions(
        suppression=runtime.suppression,
        unsubscriber=runtime.unsubscriber,
        soft_bounces=SoftBounces(runtime.redis, window=timedelta(days=14)),
        delivery_log=runtime.delivery_log,
        soft_bounce_limit=3,
    )
    token = sign_address(SECRET.encode(), "cy@example.com", "marketing", "en")
    now = utc_now()
    for raw in (
        samples.dsn("gone@example.com", "5.1.1", "550 5.1.1 <gone@example.com>: user unknown"),
        samples.arf("angry@example.com"),
        samples.mailto_unsubscribe("cy@example.com", token),
        samples.vacation("away@example.com"),
    ):
        actions.act(classify(raw), now=now)
    _post_all(runtime)
    assert receiver.types() == [
        ("address.bounced", "gone@example.com"),
        ("address.complained", "angry@example.com"),
        ("customer.unsubscribed", "cy@example.com"),
    ]
    assert {e["source"] for e in receiver.events} == {"mailbox"}
    assert [e["scope"] for e in receiver.events] == ["all", "all", "marketing"]


def test_an_unsubscribe_after_a_bounce_changes_nothing_and_tells_nothing(redis_client):
    suppression = SuppressionList(redis_client, announce=True)
    now = utc_now()
    assert suppression.add(
        "z@example.com", "550 5.1.1", now=now, event="address.bounced", source="smtp"
    )
    assert not suppression.add(
        "z@example.com", "unsubscribed", now=now, scope="marketing",
        event="customer.unsubscribed", source="one-click",
    )  # fmt: skip
    assert not suppression.add(
        "z@example.com", "550 5.1.1", now=now, event="address.bounced", source="smtp"
    )
    entry = suppression.entry("z@example.com")
    assert entry is not None and entry.scope == "all"
    assert [e.type for e in SuppressionOutbox(redis_client).pending(10)] == ["address.bounced"]
    # Without announce (no CRM_CRM_EVENTS_URL) the list changes and the outbox stays empty.
    quiet = SuppressionList(redis_client)
    assert quiet.remove("z@example.com") and quiet.add("q@example.com", "asked", now=now)
    assert redis_client.xlen(SUPPRESSION_EVENTS_KEY) == 1


def test_operator_commands_are_events_posted_by_a_running_worker(tmp_path, receiver, redis_client):
    # redis_client: the database is emptied first; the commands and the worker share it
    # (CRM_REDIS_URL from REDIS_URL, else the embedded Redis under CRM_DATA_DIR).
    env = base_env(tmp_path) | {
        "CRM_CRM_EVENTS_URL": receiver.url,
        "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    added = crm_worker(
        "suppress", "add", "op@example.com", "--reason", "asked by phone", env=env, cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    removed = crm_worker("suppress", "remove", "op@example.com", env=env, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert receiver.events == []  # the commands do not wait on the CRM
    settings = load_settings(env)
    runtime = Runtime(settings)
    try:
        runtime.sweeper.sweep()
    finally:
        runtime.close()
    assert receiver.types() == [
        ("address.suppressed", "op@example.com"),
        ("address.unsuppressed", "op@example.com"),
    ]
    assert [e["reason"] for e in receiver.events] == ["asked by phone", "removed by an operator"]
    assert [e["source"] for e in receiver.events] == ["operator", "operator"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("crm-hook", "neither an http(s):// URL nor a name in CRM_WEBHOOKS (configured: chat)"),
        ("ftp://crm.example.com/x", "neither an http(s):// URL nor a name in CRM_WEBHOOKS"),
    ],
)
def test_a_crm_events_url_that_names_nothing_is_refused_at_start(value, words):
    with pytest.raises(ConfigError) as refused:
        load_settings(
            {
                "CRM_CRM_EVENTS_URL": value,
                "CRM_WEBHOOKS": json.dumps({"chat": "https://hooks.example.com/T0k3n"}),
                "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
            }
        )
    assert words in str(refused.value)
    assert "T0k3n" not in str(refused.value)


def test_crm_events_need_the_webhook_secret_and_may_name_a_webhook():
    with pytest.raises(ConfigError, match="needs CRM_WEBHOOK_SECRET"):
        load_settings({"CRM_CRM_EVENTS_URL": "https://crm.example.com/hooks/suppression"})
    settings = load_settings(
        {
            "CRM_CRM_EVENTS_URL": "crm",
            "CRM_WEBHOOKS": json.dumps({"crm": "https://crm.example.com/hooks/s"}),
            "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )
    assert settings.crm_events_target == ("crm", "https://crm.example.com/hooks/s")


def test_nothing_is_lost_when_the_crm_is_down_and_redis_is_killed_meanwhile(tmp_path):
    # Real processes: an intake and a worker on a Redis of their own (AOF, fsync always), the
    # CRM down. Redis is killed and restarted between unsubscribes; once the CRM is back, the
    # worker's sweeper delivers every event, once, in order.
    server = RedisProcess(tmp_path / "redis", fsync="always")
    server.start()
    crm = CrmReceiver(WEBHOOK_SECRET.encode())  # not started: the CRM is down
    settings = {
        "CRM_REDIS_URL": server.url,
        "CRM_UNSUBSCRIBE_SECRET": SECRET,
        "CRM_UNSUBSCRIBE_URL": BASE,
        "CRM_CRM_EVENTS_URL": crm.url,
        "CRM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CRM_SWEEP_INTERVAL_S": "0.5",
        "CRM_WORKER_THREADS": "1",
    }
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    worker = start_crm_worker(
        "worker", env=worker_env(base_env(worker_dir) | settings), cwd=worker_dir
    )
    addresses = [f"u{n}@example.com" for n in range(5)]

    def unsubscribe(url: str, address: str) -> None:
        token = sign_address(SECRET.encode(), address, "marketing", "en")

        def answered() -> bool:
            try:
                link = f"{url}/u/{token}"
                return httpx.post(link, headers=FORM, timeout=10, **ONE_CLICK).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(answered, timeout_s=30, poll_s=0.2)  # 503 while Redis restarts

    try:
        with intake_process(tmp_path, **settings) as (_, url, _):
            for address in addresses[:3]:
                unsubscribe(url, address)
            time.sleep(1.5)  # the worker tries (and fails) to post meanwhile
            server.kill()
            server.start()
            for address in addresses[3:]:
                unsubscribe(url, address)
        crm.start()
        assert wait_until(lambda: len(crm.events) >= 5, timeout_s=90, poll_s=0.2), crm.events
        time.sleep(1.5)  # a few more sweeps: nothing comes twice
    finally:
        crm.stop()
        worker.terminate()
        worker.wait(timeout=30)
        server.kill()
    assert crm.forged == 0
    assert crm.types() == [("customer.unsubscribed", address) for address in addresses]
    assert len({event["id"] for event in crm.events}) == 5
