"""The console's pages over HTTP (the real app, a real Redis, the sample data, the test SMTP
server): a broken rule file is listed with its diagnostics and can be fixed from its page,
bad query parameters are refused with what to write, the delivery log filters, and "retry
failed" queues the failed deliveries again in the ledger."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.consolekit import EDITOR, PASSWORD, add_logins, console_files, csrf_of
from worker.localtime import parse_instant
from worker.web.console import create_console_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

NOW = "2026-03-15T23:00:00Z"
BOUNCING = "leo.davies337@example.net"
BROKEN = "id: broken-rule\ntrigger:\n  birthdy: {}\nsend: []\n"


@pytest.fixture
def site(
    tmp_path: Path, make_runtime: Any, make_settings: Any, smtp_server: Any, smtp_env: Any
) -> Iterator[tuple[TestClient, Any]]:
    """A logged-in editor's client after one delivered pass (one mail refused: 550 5.1.1)."""
    env = {**console_files(tmp_path), **smtp_env}
    runtime = make_runtime(make_settings(**env))
    add_logins(runtime)
    smtp_server.refuse_rcpt[BOUNCING] = "550 5.1.1 no such user"
    runtime.run_once(parse_instant(NOW))
    with TestClient(create_console_app(runtime), follow_redirects=False) as client:
        token = csrf_of(client.get("/login").text)
        client.post("/login", data={"csrf": token, "name": EDITOR, "password": PASSWORD})
        yield client, runtime


def test_a_broken_rule_file_is_listed_and_fixed_from_its_page(site: Any) -> None:
    client, runtime = site
    path = runtime.settings.rules_dir / "broken-rule.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    listing = client.get("/rules").text
    assert "broken-rule" in listing
    assert "badge invalid" in listing
    assert f"{path}:3:3: " in listing  # check's diagnostic, at file:line:col
    page = client.get("/rules/broken-rule")
    assert page.status_code == 200
    assert "did you mean" in page.text
    fixed = (
        "id: broken-rule\ntrigger:\n  birthday: {}\n"
        "send: [{channel: email, template: birthday, to: customer.email}]\n"
    )
    digest = page.text.split('name="digest" value="')[1].split('"')[0]
    saved = client.post(
        "/rules/broken-rule", data={"csrf": csrf_of(page.text), "digest": digest, "text": fixed}
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == "/rules/broken-rule?saved=1"
    assert path.read_text(encoding="utf-8") == fixed
    assert "badge valid" in client.get("/rules/broken-rule").text


def test_an_unknown_rule_customer_or_bad_parameter_is_refused(site: Any) -> None:
    client, _ = site
    for path, status, says in [
        ("/rules/no-such-rule", 404, "no rule"),
        ("/customers/no-such-customer", 404, "not in the CRM data"),
        ("/preview/no-such-rule/1", 404, "rules: birthday-greeting"),
        ("/preview/birthday-greeting/no-such-customer", 404, "no customer"),
        ("/preview/birthday-greeting/1?now=yesterday", 400, "ISO 8601"),
        ("/upcoming?days=0", 400, "from 1 to 92"),
        ("/upcoming?days=93", 400, "from 1 to 92"),
        ("/upcoming?days=abc", 400, "from 1 to 92"),
        ("/deliveries?since=last+week", 400, "24h, 7d"),
        ("/deliveries?state=lost", 400, "sent, skipped"),
        ("/deliveries?rule=nope", 400, "no rule"),
    ]:
        answer = client.get(path)
        assert answer.status_code == status, path
        assert says in answer.text, path


def test_the_delivery_log_filters_and_retry_failed_queues_again(site: Any) -> None:
    client, runtime = site
    everything = client.get("/deliveries?since=30d").text
    assert BOUNCING in everything
    assert "badge sent" in everything
    failed = client.get("/deliveries?since=30d&state=failed").text
    assert BOUNCING in failed
    assert "badge sent" not in failed
    assert "Retry failed (1)" in failed
    other_rule = client.get("/deliveries?since=30d&rule=purchase-anniversary&state=failed").text
    assert BOUNCING not in other_rule
    assert BOUNCING not in client.get("/deliveries?since=30d&until=2000-01-01T00:00:00Z").text
    key = "birthday-greeting:customer:337:2026/email"
    assert runtime.ledger.get(key)["state"] == "failed"
    answer = client.post("/deliveries/retry", data={"csrf": csrf_of(failed)})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/deliveries?retried=1"
    assert runtime.ledger.get(key)["state"] == "queued"
    assert "Queued 1 delivery(ies) again" in client.get(answer.headers["location"]).text


def test_a_refused_edit_shows_problems_in_other_files_apart(site: Any) -> None:
    client, runtime = site
    path = runtime.settings.rules_dir / "birthday-greeting.yaml"
    old = path.read_text(encoding="utf-8")
    page = client.get("/rules/birthday-greeting")
    digest = page.text.split('name="digest" value="')[1].split('"')[0]
    text = old.replace("template: birthday", "template: complaint-follow-up")
    refused = client.post(
        "/rules/birthday-greeting",
        data={"csrf": csrf_of(page.text), "digest": digest, "text": text},
    )
    assert refused.status_code == 422
    assert "Problems this edit brings in other files" in refused.text
    assert str(runtime.settings.templates_dir / "complaint-follow-up") in refused.text
    assert path.read_text(encoding="utf-8") == old
