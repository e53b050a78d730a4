"""The event intake over real HTTP: uvicorn on 127.0.0.1, real Redis, a real SMTP server.

The CRM posts events; each test counts what the SMTP server received and what Redis holds."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.faultkit import write_crm_files
from tests.serverkit import serve_app
from tests.test_cli import base_env, crm_worker
from worker.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER
from worker.constants import MAX_INTAKE_BODY_BYTES
from worker.errors import ConfigError
from worker.localtime import utc_now
from worker.planning.events import EventLog, record_event
from worker.runtime import Runtime
from worker.web.intake import IntakeAuth, create_app
from worker.web.intake.auth import sign

TOKEN = "token-0123456789abcdef"
SECRET = "secret-0123456789abcdef"

CUSTOMERS = (
    "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,email_opt_in\n"
)
CUSTOMERS += "1,ana@example.com,Ana,Ruiz,1990-03-14,en,Europe/Berlin,m1@example.com,true\n"
PURCHASES = "id,customer_id,product,purchased_at,delivered_at\n"
PURCHASES += "P1,1,Road bike,2026-03-13T20:00:00Z,\n"
WELCOME = """\
id: welcome
trigger: {event: {type: purchase.created}}
send: [{channel: email, template: delivery-follow-up, to: customer.email}]
"""


@pytest.fixture
def crm(tmp_path: Path) -> dict[str, str]:
    """A one-customer CRM and one rule that mails on purchase.created."""
    folder = write_crm_files(tmp_path / "crm", CUSTOMERS, purchases=PURCHASES)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "welcome.yaml").write_text(WELCOME, encoding="utf-8")
    return {"CRM_SOURCE": str(folder), "CRM_RULES_DIR": str(rules)}


def serve(runtime: Runtime, auth: IntakeAuth) -> Iterator[str]:
    """The intake app served by a real uvicorn on a free port, configured as ``crm-worker
    intake`` configures it, until the generator closes."""
    yield from serve_app(create_app(runtime, auth), runtime.settings)


@pytest.fixture
def intake(crm, make_runtime, make_settings, smtp_server) -> Iterator[tuple[str, Runtime]]:
    """A running intake (token and secret both set) and its runtime, which also delivers."""
    settings = make_settings(
        **crm,
        CRM_SMTP_HOST=smtp_server.host,
        CRM_SMTP_PORT=str(smtp_server.port),
        CRM_SMTP_SECURITY="none",
        CRM_INTAKE_TOKEN=TOKEN,
        CRM_INTAKE_SECRET=SECRET,
    )
    runtime = make_runtime(settings)
    yield from ((url, runtime) for url in serve(runtime, IntakeAuth.from_settings(settings, "::1")))


def event(event_id: str = "crm-1", **changes: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase.created", "record_id": "P1"} | changes


def post(url: str, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(f"{url}/events", content=data, headers=headers, timeout=30)


def signed(body: dict[str, Any], secret: str = SECRET, at: float | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode()
    return {"body": data, **sign(secret.encode(), data, time.time() if at is None else at)}


def test_signed_post_delivers_one_mail_and_a_repeat_sends_nothing(intake, smtp_server):
    url, runtime = intake
    worker = runtime.start_worker()
    try:
        first = post(url, **signed(event(data={"via": "web"})))
        assert first.status_code == 202, first.text
        assert first.json() == {
            "status": "accepted",
            "id": "crm-1",
            "rules": 1,
            "queued": ["welcome:purchase:P1:crm-1/email"],
        }
        assert runtime.wait_for(first.json()["queued"], timeout_s=60) == {
            "welcome:purchase:P1:crm-1/email": "sent"
        }
        again = post(url, **signed(event(data={"via": "retry"})))
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate" and again.json()["queued"] == []
    finally:
        worker.stop()
    assert [r.recipients for r in smtp_server.received] == [["ana@example.com"]]
    stored = EventLog(runtime.redis).get("crm-1")
    assert stored is not None and stored.data == {"via": "web"}  # the first version is kept


def test_bearer_post_from_the_command_line_queues_once(intake, tmp_path):
    url, runtime = intake
    env = base_env(tmp_path) | {"CRM_INTAKE_TOKEN": TOKEN}
    args = ["event", "purchase.created", "--id", "P1", "--event-id", "crm-7", "--post", url]
    first = crm_worker(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "accepted event crm-7: queued 1"
    again = crm_worker(*args, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "duplicate event crm-7: queued 0"
    assert runtime.ledger.states(["welcome:purchase:P1:crm-7/email"]) == {
        "welcome:purchase:P1:crm-7/email": "queued"
    }
    wrong = crm_worker(*args, env=env | {"CRM_INTAKE_TOKEN": "x" * 20}, cwd=tmp_path)
    assert wrong.returncode == 2 and "answered 401" in wrong.stderr


def test_requests_without_valid_credentials_are_refused_with_401(intake):
    url, runtime = intake
    body = event("crm-2")
    data = json.dumps(body).encode()
    answers = [
        post(url, body),
        post(url, body, Authorization=f"Bearer {TOKEN}x"),
        post(url, body, Authorization=f"Basic {TOKEN}"),
        post(url, **signed(body, secret="another-secret-0123456789")),
        post(url, **signed(body, at=time.time() - 3600)),  # a captured request replayed later
        post(url, data + b" ", **sign(SECRET.encode(), data, time.time())),  # body changed
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers)
    assert "more than 300 s off" in answers[4].json()["error"]
    assert EventLog(runtime.redis).get("crm-2") is None


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (event(record_id="P1:x"), 422, "record_id", "'P1:x' is not usable"),
        ({"id": "crm-3", "type": "purchase.created"}, 422, "record_id", "Field required"),
        (event(type="PurchaseCreated"), 422, "type", "write entity.what"),
        (event(at="2026-03-14T10:00:00"), 422, "at", "timezone"),
        (event(data=[1, 2]), 422, "data", "valid dictionary"),
        (event(sned_at="now"), 422, "sned_at", "Extra inputs"),
        (event(data={"x": "y" * 20_000}), 422, "data", "over 16384 bytes"),
        (b"[1, 2]", 422, "body", "must be a JSON object"),
        (b'{"id": "crm-3",', 400, None, "not JSON"),
    ],
)
def test_malformed_events_are_refused_naming_the_field(intake, body, status, field, words):
    assert_refused(intake, body, status, field, words)


def assert_refused(
    intake: tuple[str, Runtime], body: Any, status: int, field: str | None, words: str
) -> None:
    """An authenticated post of ``body`` is refused with ``status``, naming ``field`` and
    saying ``words``, and no event is recorded."""
    url, runtime = intake
    answer = post(url, body, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    assert words in answer.json()["error"]
    assert runtime.redis.keys("crm:event:*") == []


def test_wrong_media_type_is_415_and_an_oversized_body_413(intake):
    url, runtime = intake
    as_form = post(url, event(), Authorization=f"Bearer {TOKEN}", **{"Content-Type": "text/plain"})
    assert as_form.status_code == 415 and "application/json" in as_form.json()["error"]
    huge = json.dumps(event(data={"x": "y" * MAX_INTAKE_BODY_BYTES})).encode()
    declared = post(url, huge, Authorization=f"Bearer {TOKEN}")
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    streamed = httpx.post(
        f"{url}/events",
        content=chunks(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413, streamed.text
    assert runtime.redis.keys("crm:event:*") == []


def test_redis_down_answers_503_so_the_crm_retries(crm, make_settings):
    closed = free_port()  # nothing listens there
    settings = make_settings(**crm, CRM_REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    runtime = Runtime(settings)
    try:
        for url in serve(runtime, IntakeAuth(token=TOKEN.encode(), secret=None)):
            answer = post(url, event(), Authorization=f"Bearer {TOKEN}")
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "30"
            health = httpx.get(f"{url}/health", timeout=30)
            assert health.status_code == 503 and health.json()["redis"] == "unreachable"
    finally:
        runtime.close()


def test_health_answers_while_redis_does(intake):
    url, _ = intake
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok", "redis": "ok"}


def test_intake_refuses_to_start_without_credentials(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="needs CRM_INTAKE_TOKEN"):
        IntakeAuth.from_settings(make_settings(), "127.0.0.1")
    local = make_settings(CRM_INTAKE_ALLOW_UNAUTHENTICATED="true")
    assert IntakeAuth.from_settings(local, "127.0.0.1").open
    with pytest.raises(ConfigError, match=r"loopback address only, not on 0\.0\.0\.0"):
        IntakeAuth.from_settings(local, "0.0.0.0")
    with pytest.raises(ConfigError, match=r"CRM_INTAKE_TOKEN: .*at least 16"):
        make_settings(CRM_INTAKE_TOKEN="short")
    refused = crm_worker("intake", "--host", "0.0.0.0", env=base_env(tmp_path), cwd=tmp_path)
    assert refused.returncode == 2 and "needs CRM_INTAKE_TOKEN" in refused.stderr


def test_signature_headers_are_those_of_the_webhook_channel():
    headers = sign(b"k", b"{}", 1_700_000_000.0)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER] == (
        "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
    )


def test_a_retry_after_a_failure_between_record_and_queue_still_queues(intake):
    url, runtime = intake
    # The first call recorded the event and died before queuing (the CRM saw no 202).
    record_event(runtime.redis, "purchase.created", "P1", event_id="crm-4")
    answer = post(url, event("crm-4"), Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "duplicate"
    assert answer.json()["queued"] == ["welcome:purchase:P1:crm-4/email"]


def test_an_event_stamped_in_the_future_waits_for_its_time(intake):
    url, runtime = intake
    soon = (utc_now() + timedelta(minutes=2)).isoformat()  # a CRM clock a little ahead
    answer = post(url, event("crm-5", at=soon), Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 202, answer.text
    assert answer.json()["queued"] == []  # the scheduler's pass at that time queues it
    assert EventLog(runtime.redis).get("crm-5") is not None
    broken = post(url, event("crm-6", at="2099-01-01T00:00:00Z"), Authorization=f"Bearer {TOKEN}")
    assert broken.status_code == 422 and broken.json()["field"] == "at"
    assert EventLog(runtime.redis).get("crm-6") is None


def test_an_event_whose_crm_data_is_unreachable_is_kept_for_the_next_pass(
    crm, make_runtime, make_settings
):
    closed = free_port()  # the CRM database is down
    settings = make_settings(
        CRM_RULES_DIR=crm["CRM_RULES_DIR"],
        CRM_SOURCE=f"postgresql+psycopg://crm_reader:s3cret@127.0.0.1:{closed}/crm",
        CRM_SOURCE_QUERIES=str(REPO / "examples" / "sql" / "queries.yaml"),
    )
    runtime = make_runtime(settings)
    for url in serve(runtime, IntakeAuth(token=TOKEN.encode(), secret=None)):
        answer = post(url, event("crm-8"), Authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 202, answer.text
        assert answer.json()["queued"] == [] and "s3cret" not in answer.text
    stored = EventLog(runtime.redis).get("crm-8")
    assert stored is not None and stored.record_id == "P1"  # the next pass finds it


def test_concurrent_posts_and_retries_queue_each_event_once(intake):
    url, runtime = intake
    bodies = [event(f"crm-c{n % 8}") for n in range(32)]  # every event posted four times
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(
                lambda body: client.post(
                    f"{url}/events",
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ),
                bodies,
            )
        )
    assert Counter(a.json()["status"] for a in answers) == {"accepted": 8, "duplicate": 24}
    queued = [key for a in answers for key in a.json()["queued"]]
    assert sorted(queued) == sorted(f"welcome:purchase:P1:crm-c{n}/email" for n in range(8))
    assert set(runtime.ledger.states(queued).values()) == {"queued"}
