"""The webhook channel against a real HTTP server on 127.0.0.1: what it receives, and how the
ledger handles its answers (5xx and 429 retried, Retry-After honoured, 4xx failed once)."""

from __future__ import annotations

import hmac
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from worker.authoring.validation import check_all
from worker.channels import Outgoing, WebhookChannel
from worker.channels.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    retry_after,
    signature,
)
from worker.delivery.batch import deliver_one
from worker.delivery.payload import render_payload
from worker.errors import PermanentDeliveryError, RuleError
from worker.localtime import parse_instant, utc_now
from worker.messages.rendering import TemplateRenderer
from worker.planning.plan import PlannedDelivery, plan
from worker.rules import load_rule_text

NOW = parse_instant("2026-03-14T10:00:00Z")
SECRET = "webhook-signing-secret"
#: The path of the hook URL stands for the token chat tools put in it: it must never leak.
TOKEN = "T0KEN-in-the-url"

BIRTHDAY_CHAT_RULE = """\
id: birthday-chat
description: Tell the account manager's chat that a customer has a birthday today
trigger:
  birthday:
    field: customer.birthday
    at: "09:00"
when: customer.email_opt_in
send:
  - channel: webhook
    webhook: sales-chat          # a name from CRM_WEBHOOKS: the URL stays out of rule files
    template: birthday-chat      # templates/birthday-chat/<locale>/webhook.json.j2
    to: customer.account_manager_email
"""

BIRTHDAY_CHAT_JSON = """\
{"text": {{ ("Birthday today: " ~ customer.first_name ~ " " ~ customer.last_name
             ~ " <" ~ customer.email ~ ">") | tojson }},
 "manager": {{ customer.account_manager_email | tojson }}}
"""


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    """Records every POST; answers from ``script`` (status, headers, delay_s), then 200."""

    url: str
    requests: list[Request] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> tuple[int, dict[str, str], float]:
        with self.lock:
            return self.script.pop(0) if self.script else (200, {}, 0.0)


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server_state: dict[str, HookServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hooks = server_state["hooks"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hooks.lock:
                hooks.requests.append(Request(self.path, dict(self.headers.items()), body))
            status, headers, delay_s = hooks.next_answer()
            time.sleep(delay_s)
            reply = b"ok" if status < 400 else b"invalid_payload: see docs"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state["hooks"] = HookServer(f"http://127.0.0.1:{httpd.server_address[1]}/hook/{TOKEN}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server_state["hooks"]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def chat_settings(tmp_path: Path, make_settings: Any, hook_server: HookServer) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday-chat.yaml").write_text(BIRTHDAY_CHAT_RULE, encoding="utf-8")
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "birthday-chat" / "en").mkdir(parents=True)
    (templates / "birthday-chat" / "en" / "webhook.json.j2").write_text(BIRTHDAY_CHAT_JSON)

    def build(**overrides: str) -> Any:
        return make_settings(
            CRM_RULES_DIR=str(rules),
            CRM_TEMPLATES_DIR=str(templates),
            CRM_WEBHOOKS=json.dumps({"sales-chat": hook_server.url}),
            CRM_WEBHOOK_SECRET=SECRET,
            **overrides,
        )

    return build


def _planned(runtime: Any) -> list[PlannedDelivery]:
    items = plan(
        runtime.catalog,
        runtime.source,
        NOW,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    )
    return [i for i in items if isinstance(i, PlannedDelivery)]


def _one_queued_key(runtime: Any) -> str:
    report = runtime.scheduler.run_pass(NOW)
    assert report.queued
    return str(report.queued[0])


def _deliver(runtime: Any, key: str, after: timedelta = timedelta(0)) -> Any:
    """Deliver ``key`` as a worker would ``after`` the planned instant (a retry comes when its
    backoff is over)."""
    wall = utc_now()
    return deliver_one(runtime.deliverer, key, as_of=NOW, enqueued_at=wall, now=wall + after)


def test_run_once_posts_each_due_message_once_signed(
    make_runtime: Any, chat_settings: Any, hook_server: HookServer
) -> None:
    runtime = make_runtime(chat_settings())
    expected = {p.key: p for p in _planned(runtime)}
    assert len(expected) >= 3

    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"sent": len(expected)})
    received = {r.headers[IDEMPOTENCY_HEADER]: r for r in hook_server.requests}
    assert len(hook_server.requests) == len(received) == len(expected)
    assert set(received) == set(expected)
    for key, request in received.items():
        assert request.path == f"/hook/{TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
        sent = signature(SECRET.encode(), request.headers[TIMESTAMP_HEADER], request.body)
        assert hmac.compare_digest(request.headers[SIGNATURE_HEADER], sent)
        payload = json.loads(request.body)
        customer = expected[key].context["customer"]
        assert isinstance(customer, dict)
        assert payload["manager"] == customer["account_manager_email"] == expected[key].to
        assert f"<{customer['email']}>" in payload["text"]

    again = runtime.run_once(NOW)
    assert again.report.queued == [] and len(hook_server.requests) == len(expected)


def test_a_tampered_body_does_not_verify(hook_server: HookServer) -> None:
    channel = WebhookChannel({"sales-chat": hook_server.url}, secret=SECRET.encode())
    channel.send(_outgoing(b'{"text": "hi"}'))
    channel.close()
    request = hook_server.requests[0]
    forged = signature(SECRET.encode(), request.headers[TIMESTAMP_HEADER], b'{"text": "HI"}')
    assert request.headers[SIGNATURE_HEADER] != forged
    assert request.headers[IDEMPOTENCY_HEADER] == "r:customer:1:2026/webhook"


def test_server_error_then_success_is_one_delivery(
    make_runtime: Any, chat_settings: Any, hook_server: HookServer
) -> None:
    runtime = make_runtime(chat_settings())
    key = _one_queued_key(runtime)
    hook_server.script = [(503, {}, 0.0)]

    first = _deliver(runtime, key)
    assert first.outcome == "retry" and first.retry_after == timedelta(seconds=30)
    assert runtime.ledger.get(key)["state"] == "retrying"
    second = _deliver(runtime, key, after=timedelta(seconds=31))
    assert second.outcome == "sent"
    third = _deliver(runtime, key, after=timedelta(seconds=32))
    assert third.outcome == "duplicate"

    assert [r.headers[IDEMPOTENCY_HEADER] for r in hook_server.requests] == [key, key]
    assert runtime.ledger.get(key)["state"] == "sent"


def test_too_many_requests_waits_as_long_as_the_server_asks(
    make_runtime: Any, chat_settings: Any, hook_server: HookServer
) -> None:
    runtime = make_runtime(chat_settings())
    key = _one_queued_key(runtime)
    hook_server.script = [(429, {"Retry-After": "120"}, 0.0)]

    result = _deliver(runtime, key)
    assert result.outcome == "retry"
    assert result.retry_after == timedelta(seconds=120)  # not the 30 s first backoff
    assert "429" in runtime.ledger.get(key)["reason"]
    assert _deliver(runtime, key, after=timedelta(seconds=60)).outcome == "busy"  # asked 120 s
    assert _deliver(runtime, key, after=timedelta(seconds=121)).outcome == "sent"
    assert len(hook_server.requests) == 2


def test_a_client_error_fails_once_without_retry_or_leaking_the_url(
    make_runtime: Any, chat_settings: Any, hook_server: HookServer
) -> None:
    runtime = make_runtime(chat_settings())
    key = _one_queued_key(runtime)
    hook_server.script = [(400, {}, 0.0)]

    result = _deliver(runtime, key)
    assert result.outcome == "failed" and result.retry_after is None
    entry = runtime.ledger.get(key)
    assert entry["state"] == "failed"
    assert "webhook sales-chat (127.0.0.1) refused the message (400" in entry["reason"]
    assert TOKEN not in entry["reason"] and TOKEN not in entry.get("detail", "")
    assert _deliver(runtime, key).outcome == "duplicate"
    assert len(hook_server.requests) == 1


def test_no_answer_in_time_is_transient(
    make_runtime: Any, chat_settings: Any, hook_server: HookServer
) -> None:
    runtime = make_runtime(chat_settings(CRM_WEBHOOK_TIMEOUT_S="0.2"))
    key = _one_queued_key(runtime)
    hook_server.script = [(200, {}, 1.0)]
    result = _deliver(runtime, key)
    assert result.outcome == "retry" and "no answer within 0.2 s" in result.reason


def test_unknown_webhook_name_is_permanent(hook_server: HookServer) -> None:
    channel = WebhookChannel({"sales-chat": hook_server.url})
    with pytest.raises(PermanentDeliveryError, match="no webhook named 'nowhere'") as caught:
        channel.send(_outgoing(b"{}", endpoint="nowhere"))
    assert TOKEN not in str(caught.value)
    assert hook_server.requests == []


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 3, 14, 10, tzinfo=UTC)
    assert retry_after("7", now) == timedelta(seconds=7)
    assert retry_after("Sat, 14 Mar 2026 10:05:00 GMT", now) == timedelta(minutes=5)
    assert retry_after("Sat, 14 Mar 2026 09:00:00 GMT", now) == timedelta(0)
    assert retry_after("99999999", now) == timedelta(hours=1)
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def test_a_webhook_rule_must_name_its_endpoint() -> None:
    without = BIRTHDAY_CHAT_RULE.replace("    webhook: sales-chat", "    # no webhook")
    with pytest.raises(RuleError, match="add 'webhook: <name>'"):
        load_rule_text(without, Path("birthday-chat.yaml"))
    on_email = BIRTHDAY_CHAT_RULE.replace("channel: webhook", "channel: email")
    with pytest.raises(RuleError, match="only for 'channel: webhook'"):
        load_rule_text(on_email, Path("birthday-chat.yaml"))
    with pytest.raises(RuleError, match="webhook"):
        load_rule_text(
            BIRTHDAY_CHAT_RULE.replace("channel: webhook", "channel: sms"),
            Path("birthday-chat.yaml"),
        )


def test_check_renders_webhook_templates_and_catches_invalid_json(
    make_runtime: Any, chat_settings: Any
) -> None:
    runtime = make_runtime(chat_settings())
    assert (
        check_all(runtime.catalog, runtime.renderer, runtime.source, webhooks={"sales-chat"}) == []
    )
    unconfigured = check_all(runtime.catalog, runtime.renderer, runtime.source, webhooks=set())
    assert [p.message for p in unconfigured] == [
        "webhook 'sales-chat' is not in CRM_WEBHOOKS (configured: none)"
    ]
    template = runtime.settings.templates_dir / "birthday-chat" / "en" / "webhook.json.j2"
    template.write_text('{"text": {{ customer.first_name }}}')
    problems = check_all(runtime.catalog, runtime.renderer, runtime.source)
    assert [p.path.name for p in problems] == ["webhook.json.j2"]
    assert "does not render to valid JSON" in problems[0].message


def test_a_template_without_json_part_posts_its_text_body() -> None:
    renderer = TemplateRenderer(REPO / "templates", "en")
    context = {
        "customer": {"first_name": "Jürgen"},
        "company": {"name": "Shop", "address": "Street 1"},
    }
    payload = render_payload(renderer, "birthday", "de-AT", context)
    assert payload.content_type == "text/plain; charset=utf-8"
    assert "Jürgen" in payload.body.decode("utf-8")


def test_the_shipped_complaint_alert_renders_valid_json() -> None:
    renderer = TemplateRenderer(REPO / "templates", "en")
    context = {
        "complaint": {"id": "C1", "subject": 'Wrong "size"\nagain', "opened_at": "2026-11-07"},
        "customer": {
            "first_name": "",
            "last_name": "",
            "email": "a@example.com",
            "account_manager_email": "anna@example.com",
        },
    }
    payload = render_payload(renderer, "complaint-alert", "es", context)
    text = json.loads(payload.body)["text"]
    assert 'Complaint C1 (Wrong "size"\nagain) from a@example.com is still open' in text


def _outgoing(body: bytes, *, endpoint: str = "sales-chat") -> Outgoing:
    return Outgoing(
        key="r:customer:1:2026/webhook",
        channel="webhook",
        sender="",
        recipient="anna@example.com",
        message_id="",
        data=body,
        content_type="application/json",
        endpoint=endpoint,
    )


def test_the_shipped_chat_rule_waits_switched_off_until_its_webhook_is_named(
    make_runtime: Any, make_settings: Any, tmp_path: Path
) -> None:
    shipped = make_runtime(make_settings())
    assert check_all(shipped.catalog, shipped.renderer, shipped.source, webhooks=set()) == []
    rule = shipped.catalog.get("complaint-sales-chat")
    assert rule is not None and not rule.enabled
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (REPO / "rules" / "complaint-sales-chat.yaml").read_text(encoding="utf-8")
    (rules / "complaint-sales-chat.yaml").write_text(
        text.replace("enabled: false", "enabled: true"), encoding="utf-8"
    )
    switched_on = make_runtime(make_settings(CRM_RULES_DIR=str(rules)))
    catalog, renderer, source = switched_on.catalog, switched_on.renderer, switched_on.source
    assert [str(p).split("/")[-1] for p in check_all(catalog, renderer, source, webhooks=[])] == [
        "complaint-sales-chat.yaml:19:14: webhook 'sales-chat' is not in CRM_WEBHOOKS "
        "(configured: none)"
    ]
    assert check_all(catalog, renderer, source, webhooks=["sales-chat"]) == []
