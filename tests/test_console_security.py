"""The console's defences, over HTTP against the real app, a real Redis and the sample data:
no page without a login, every POST needs the session's CSRF token, markup from a rule file,
a template or a customer's record shows as text, a rule id cannot reach outside the rules
folder, logins are rate-limited, and every answer carries the strict headers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.consolekit import (
    EDITOR,
    PASSWORD,
    SCRIPT,
    VIEWER,
    add_logins,
    console_files,
    csrf_of,
)
from worker.constants import CONSOLE_LOGINS_PER_MINUTE, MAX_CONSOLE_FORM_BYTES
from worker.web.console import create_console_app
from worker.web.console.sessions import SESSION_COOKIE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PAGES = (
    "/",
    "/rules",
    "/rules/birthday-greeting",
    "/upcoming?days=3",
    "/customers/1",
    "/preview/birthday-greeting/1",
    "/preview/birthday-greeting/1/html",
    "/deliveries",
)
POSTS = (
    ("/rules/birthday-greeting", {"text": "id: x\n", "digest": ""}),
    ("/preview/birthday-greeting/1/send", {}),
    ("/deliveries/retry", {}),
    ("/logout", {}),
)


@pytest.fixture
def console(tmp_path: Path, make_runtime: Any, make_settings: Any) -> Iterator[TestClient]:
    env = console_files(tmp_path, first_name=SCRIPT)
    runtime = make_runtime(make_settings(**env))
    add_logins(runtime)
    with TestClient(create_console_app(runtime), follow_redirects=False) as client:
        client.rules_dir = Path(env["CRM_RULES_DIR"])  # type: ignore[attr-defined]
        client.templates_dir = Path(env["CRM_TEMPLATES_DIR"])  # type: ignore[attr-defined]
        yield client


def log_in(client: TestClient, name: str = EDITOR, password: str = PASSWORD) -> Any:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login", data={"csrf": token, "name": name, "password": password, "next": "/rules"}
    )


def test_no_page_without_a_login(console: TestClient) -> None:
    for path in PAGES:
        answer = console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=/"), path
    for path, form in POSTS:
        answer = console.post(path, data={**form, "csrf": "anything"})
        assert answer.status_code == 403, path
    # A made-up session cookie is no session.
    console.cookies.set(SESSION_COOKIE, "forged-session-token")
    assert console.get("/rules").status_code == 303


def test_a_wrong_password_opens_no_session(console: TestClient) -> None:
    answer = log_in(console, password="wrong password here")
    assert answer.status_code == 401
    assert "Wrong name or password" in answer.text
    assert SESSION_COOKIE not in answer.cookies
    assert log_in(console, name="nobody").status_code == 401
    assert console.get("/rules").status_code == 303


def test_the_session_cookie_is_httponly_and_samesite(console: TestClient) -> None:
    answer = log_in(console)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/rules"
    header = answer.headers["set-cookie"]
    assert "HttpOnly" in header
    assert "SameSite=lax" in header or "SameSite=Lax" in header
    assert "Secure" not in header  # CRM_CONSOLE_HTTPS is off
    for path in PAGES[1:]:
        assert console.get(path).status_code == 200, path
    assert console.get("/").headers["location"] == "/rules"


def test_secure_cookies_and_hsts_behind_https(
    tmp_path: Path, make_runtime: Any, make_settings: Any
) -> None:
    runtime = make_runtime(make_settings(**console_files(tmp_path), CRM_CONSOLE_HTTPS="true"))
    add_logins(runtime)
    with TestClient(
        create_console_app(runtime), base_url="https://testserver", follow_redirects=False
    ) as client:
        answer = log_in(client)
        assert "Secure" in answer.headers["set-cookie"]
        assert answer.headers["strict-transport-security"].startswith("max-age=")


def test_csrf_missing_or_wrong_is_refused(console: TestClient) -> None:
    log_in(console)
    page = console.get("/rules/birthday-greeting")
    token = csrf_of(page.text)
    before = (console.rules_dir / "birthday-greeting.yaml").read_bytes()  # type: ignore[attr-defined]
    for path, form in POSTS:
        assert console.post(path, data=form).status_code == 403, f"{path} without a token"
        wrong = {**form, "csrf": token[:-2] + "xx"}
        assert console.post(path, data=wrong).status_code == 403, f"{path} with a wrong token"
    assert (console.rules_dir / "birthday-greeting.yaml").read_bytes() == before  # type: ignore[attr-defined]
    # The login form too: its token must match the cookie sent with it.
    console.cookies.clear()
    console.get("/login")
    refused = console.post("/login", data={"csrf": "made-up", "name": EDITOR, "password": PASSWORD})
    assert refused.status_code == 403
    assert SESSION_COOKIE not in refused.cookies


def test_a_viewer_cannot_change_anything(console: TestClient) -> None:
    log_in(console, name=VIEWER)
    page = console.get("/rules/birthday-greeting")
    assert "<textarea" not in page.text
    token = csrf_of(page.text)
    before = (console.rules_dir / "birthday-greeting.yaml").read_bytes()  # type: ignore[attr-defined]
    edit = {"csrf": token, "text": before.decode().replace("09:00", "11:00"), "digest": ""}
    assert console.post("/rules/birthday-greeting", data=edit).status_code == 403
    assert console.post("/deliveries/retry", data={"csrf": token}).status_code == 403
    send = "/preview/birthday-greeting/1/send"
    assert console.post(send, data={"csrf": token}).status_code == 403
    assert "Send a test to me" not in console.get("/preview/birthday-greeting/1").text
    assert (console.rules_dir / "birthday-greeting.yaml").read_bytes() == before  # type: ignore[attr-defined]


def test_script_in_a_customer_a_template_or_a_rule_shows_as_text(console: TestClient) -> None:
    rules_dir: Path = console.rules_dir  # type: ignore[attr-defined]
    path = rules_dir / "birthday-greeting.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            "description: Birthday e-card for every customer who agreed to mail",
            f'description: "</textarea>{SCRIPT}"',
        ),
        encoding="utf-8",
    )
    body = console.templates_dir / "birthday" / "en" / "body.txt.j2"  # type: ignore[attr-defined]
    body.write_text(SCRIPT + "\n" + body.read_text(encoding="utf-8"), encoding="utf-8")
    log_in(console)
    for page in ("/rules", "/rules/birthday-greeting", "/customers/1"):
        answer = console.get(page)
        assert answer.status_code == 200, page
        assert SCRIPT not in answer.text, page
        assert "&lt;script&gt;" in answer.text, page
        assert answer.text.count("</textarea>") <= 1, page  # the editor's own, nothing more
    preview = console.get("/preview/birthday-greeting/1?now=2026-02-28T09:30:00Z")
    assert preview.status_code == 200
    assert "<script" not in preview.text
    assert "&lt;script&gt;alert(" in preview.text  # the template's line and the customer's name
    # The HTML part is the mail's own (its template escapes the name), framed under a policy
    # that runs no script and loads nothing, should a template ever let one through.
    frame = console.get("/preview/birthday-greeting/1/html?now=2026-02-28T09:30:00Z")
    assert SCRIPT not in frame.text
    policy = frame.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "sandbox" in policy
    assert 'sandbox title="HTML part' in preview.text


@pytest.mark.parametrize(
    "rule_id",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
        "..%5C..%5Cpyproject.toml",
        "birthday-greeting.yaml",
        "%2Fetc%2Fpasswd",
        "..%2Fpyproject",
    ],
)
def test_a_rule_id_cannot_leave_the_rules_folder(console: TestClient, rule_id: str) -> None:
    log_in(console)
    page = console.get("/rules/birthday-greeting")
    token = csrf_of(page.text)
    answer = console.get(f"/rules/{rule_id}")
    assert answer.status_code == 404
    assert "root:" not in answer.text and "[project]" not in answer.text
    posted = console.post(
        f"/rules/{rule_id}", data={"csrf": token, "text": "id: x\n", "digest": ""}
    )
    assert posted.status_code == 404


def test_logins_are_rate_limited(console: TestClient) -> None:
    answers = [
        log_in(console, password=f"wrong password {n}").status_code
        for n in range(CONSOLE_LOGINS_PER_MINUTE + 2)
    ]
    assert answers[:CONSOLE_LOGINS_PER_MINUTE] == [401] * CONSOLE_LOGINS_PER_MINUTE
    assert answers[-1] == 429
    # Even the right password waits for the minute to pass.
    assert log_in(console).status_code == 429


def test_every_answer_carries_the_strict_headers(console: TestClient) -> None:
    for answer in (console.get("/login"), console.get("/rules"), console.get("/nowhere")):
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_login_goes_back_only_to_console_pages(console: TestClient) -> None:
    token = csrf_of(console.get("/login?next=https://evil.example/").text)
    answer = console.post(
        "/login",
        data={"csrf": token, "name": EDITOR, "password": PASSWORD, "next": "//evil.example/x"},
    )
    assert answer.headers["location"] == "/rules"


def test_a_logout_ends_the_session(console: TestClient) -> None:
    log_in(console)
    token = csrf_of(console.get("/rules").text)
    assert console.post("/logout", data={"csrf": token}).status_code == 303
    assert console.get("/rules").status_code == 303


def test_an_oversized_or_malformed_form_is_refused(console: TestClient) -> None:
    log_in(console)
    token = csrf_of(console.get("/rules").text)
    path = console.rules_dir / "birthday-greeting.yaml"  # type: ignore[attr-defined]
    before = path.read_bytes()
    huge = {"csrf": token, "digest": "", "text": "x" * (MAX_CONSOLE_FORM_BYTES + 1)}
    assert console.post("/rules/birthday-greeting", data=huge).status_code == 413
    garbage = b"\xff\xfe%%%&&&=csrf" + bytes(range(256))
    answer = console.post(
        "/rules/birthday-greeting",
        content=garbage,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 403
    as_json = console.post("/deliveries/retry", json={"csrf": token})
    assert as_json.status_code == 403
    assert path.read_bytes() == before


def test_redis_down_is_a_503_not_a_traceback(tmp_path: Path, make_settings: Any) -> None:
    import socket

    import redis

    from worker.runtime import Runtime

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    dead = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    runtime = Runtime(make_settings(**console_files(tmp_path)), redis_client=dead)
    with TestClient(create_console_app(runtime), follow_redirects=False) as client:
        form = client.get("/login")
        assert form.status_code == 200
        answer = client.post(
            "/login", data={"csrf": csrf_of(form.text), "name": EDITOR, "password": PASSWORD}
        )
        assert answer.status_code == 503
        assert "Redis is unavailable" in answer.text
        client.cookies.set(SESSION_COOKIE, "some-session-token")
        page = client.get("/rules")
        assert page.status_code == 503
        assert "Traceback" not in page.text
