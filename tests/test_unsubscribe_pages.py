"""One-click unsubscribe (RFC 8058) and the customers' pages, over real HTTP (uvicorn on
127.0.0.1), with a real Redis and a real SMTP server: the link in a mail that really went out
is the one that is clicked, and the next messages show what the click did."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from tests.faultkit import write_crm_files
from tests.test_headers import parsed
from tests.test_intake import serve
from worker.constants import SUPPRESSION_KEY, UNSUBSCRIBE_REQUESTS_PER_MINUTE
from worker.messages.unsubscribe import sign, sign_address
from worker.runtime import Runtime
from worker.web.intake import IntakeAuth

SECRET = "unsubscribe secret"
BASE = "https://links.shop.example.com/u"
CUSTOMERS = (
    "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,email_opt_in\n"
    "1,ana@example.com,Ana,Ruiz,1990-03-14,es,Europe/Madrid,m1@example.com,true\n"
    "2,bob@example.com,Bob,Lee,1990-03-14,de-CH,Europe/Zurich,m1@example.com,true\n"
)
BIRTHDAY = """id: birthday
trigger: {birthday: {at: "09:00"}}
when: customer.email_opt_in
send: [{channel: email, template: birthday, to: customer.email}]
"""
#: A service rule: a complaint follow-up goes out whatever the marketing choice.
FOLLOW_UP = """id: follow-up
kind: service
trigger: {unresolved: {after: 1d}}
send: [{channel: email, template: complaint-follow-up, to: customer.email}]
"""
ONE_CLICK = {"content": b"List-Unsubscribe=One-Click"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def write_shop(tmp_path: Path) -> tuple[Path, Path]:
    """The two customers (no purchases, no complaints) and the birthday rule, written under
    ``tmp_path``; returns the CRM folder and the rules folder."""
    crm = write_crm_files(tmp_path / "crm", CUSTOMERS)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    return crm, rules


@pytest.fixture
def shop(
    tmp_path: Path, make_runtime, make_settings, smtp_server, smtp_env
) -> Iterator[tuple[str, Runtime]]:  # type: ignore[no-untyped-def]
    """The intake serving the unsubscribe pages, and a runtime that sends to the SMTP server."""
    crm = tmp_path / "crm"
    crm.mkdir()
    (crm / "customers.csv").write_text(CUSTOMERS, encoding="utf-8")
    (crm / "purchases.csv").write_text("id,customer_id,product,purchased_at\n", encoding="utf-8")
    (crm / "complaints.csv").write_text(
        "id,customer_id,subject,opened_at,resolved_at\n"
        "C1,1,Talla incorrecta,2026-03-20T08:00:00Z,\n",
        encoding="utf-8",
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "birthday.yaml").write_text(BIRTHDAY, encoding="utf-8")
    (rules / "follow-up.yaml").write_text(FOLLOW_UP, encoding="utf-8")
    settings = make_settings(
        CRM_SOURCE=str(crm),
        CRM_RULES_DIR=str(rules),
        CRM_UNSUBSCRIBE_SECRET=SECRET,
        CRM_UNSUBSCRIBE_URL=BASE,
        CRM_INTAKE_TOKEN="token-0123456789abcdef",
        **smtp_env,
    )
    runtime = make_runtime(settings)
    yield from ((url, runtime) for url in serve(runtime, IntakeAuth.from_settings(settings, "::1")))


def _link_in(data: bytes) -> str:
    header = parsed(data)["List-Unsubscribe"]
    found = re.search(r"<(https://[^>]+)>", header or "")
    assert found, header
    return found[1]


def _without_action(page: str) -> str:
    return re.sub(r'action="[^"]*"', 'action=""', page)


def _local(url: str, link: str) -> str:
    """The public link as the intake sees it (a proxy in front maps the host)."""
    return url + link.removeprefix("https://links.shop.example.com")


def test_one_click_in_a_real_mail_stops_marketing_but_not_service_mail(shop, smtp_server):
    url, runtime = shop
    runtime.run_once(datetime(2026, 3, 14, 9, 30, tzinfo=UTC))
    birthdays = {m.recipients[0]: m for m in smtp_server.received}
    assert set(birthdays) == {"ana@example.com", "bob@example.com"}
    link = _local(url, _link_in(birthdays["ana@example.com"].data))

    # A link scanner's GET changes nothing: a page in her language with one button.
    page = httpx.get(link, timeout=10)
    assert page.status_code == 200 and '<html lang="es">' in page.text
    assert "Darme de baja" in page.text and 'method="post"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert runtime.suppression.entry("ana@example.com") is None

    # What Gmail sends: 200, no redirect, and she is out of marketing mail.
    done = httpx.post(link, headers=FORM, timeout=10, follow_redirects=False, **ONE_CLICK)
    assert done.status_code == 200 and "Te has dado de baja" in done.text
    entry = runtime.suppression.entry("ana@example.com")
    assert entry is not None and entry.scope == "marketing"
    assert runtime.suppression.entry("bob@example.com") is None

    # A year later: no birthday mail for her, Bob's goes; her complaint follow-up still goes.
    smtp_server.received.clear()
    runtime.run_once(datetime(2027, 3, 14, 9, 30, tzinfo=UTC))
    assert [m.recipients for m in smtp_server.received] == [["bob@example.com"]]
    smtp_server.received.clear()
    runtime.run_once(datetime(2026, 3, 21, 8, 30, tzinfo=UTC))
    (follow_up,) = smtp_server.received
    assert follow_up.recipients == ["ana@example.com"]
    message = parsed(follow_up.data)
    assert message["List-Unsubscribe"] is None and message["List-Id"] is None


def test_the_way_back_within_a_day(shop):
    url, runtime = shop
    token = sign_address(SECRET.encode(), "bob@example.com", "marketing", "de-CH")
    link = f"{url}/u/{token}"
    done = httpx.post(link, headers=FORM, timeout=10, **ONE_CLICK)
    assert done.status_code == 200 and "Wieder anmelden" in done.text and "ß" not in done.text
    assert f'action="/u/{token}/undo"' in done.text
    back = httpx.post(f"{link}/undo", headers=FORM, timeout=10, **ONE_CLICK)
    assert back.status_code == 200 and "Wieder angemeldet" in back.text
    assert runtime.suppression.entry("bob@example.com") is None
    # After 24 hours the same request leaves the choice as it is.
    httpx.post(link, headers=FORM, timeout=10, **ONE_CLICK)
    old = datetime.now(UTC) - timedelta(hours=25)
    runtime.suppression.add(
        "bob@example.com", "unsubscribed (one-click)", now=old, key="unsubscribe",
        scope="marketing",
    )  # fmt: skip
    httpx.post(f"{link}/undo", headers=FORM, timeout=10, **ONE_CLICK)
    assert runtime.suppression.entry("bob@example.com") is not None


def test_a_bounce_is_never_undone_by_an_unsubscribe_link(shop):
    url, runtime = shop
    runtime.suppression.add("ana@example.com", "550 5.1.1 no such user", now=datetime.now(UTC))
    token = sign_address(SECRET.encode(), "ana@example.com", "marketing")
    httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK)
    httpx.post(f"{url}/u/{token}/undo", headers=FORM, timeout=10, **ONE_CLICK)
    entry = runtime.suppression.entry("ana@example.com")
    assert entry is not None and entry.scope == "all" and "5.1.1" in entry.reason


def test_a_link_from_mail_sent_before_addresses_were_in_tokens_still_works(shop):
    url, runtime = shop
    token = sign(SECRET.encode(), "2", "email")  # the first token format: customer and channel
    done = httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK)
    assert done.status_code == 200
    entry = runtime.suppression.entry("bob@example.com")
    assert entry is not None and entry.scope == "marketing"


@pytest.mark.parametrize(
    "token",
    [
        "2.bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA",
        "garbage",
        "1." + "A" * 3000 + ".B",
        sign_address(b"someone else's key", "ana@example.com", "marketing"),
        "%3Cscript%3Ealert(1)%3C%22%3E",  # <script>alert(1)<"> in the path
    ],
)
def test_a_forged_token_gets_the_same_answer_and_changes_nothing(shop, token):
    url, runtime = shop
    genuine = sign_address(SECRET.encode(), "bob@example.com", "marketing")
    real = httpx.post(f"{url}/u/{genuine}", headers=FORM, timeout=10, **ONE_CLICK)
    runtime.suppression.remove("bob@example.com")
    forged = httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK)
    assert forged.status_code == real.status_code == 200
    # The same page but for the form's own address (the path it was posted to, escaped).
    assert _without_action(forged.text) == _without_action(real.text)
    assert "<script>" not in forged.text
    assert runtime.redis.hlen(SUPPRESSION_KEY) == 0


def test_a_preview_test_copy_link_unsubscribes_nobody(shop):
    url, runtime = shop
    token = sign_address(SECRET.encode(), "manager@example.com", "preview")
    assert httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK).status_code == 200
    assert runtime.redis.hlen(SUPPRESSION_KEY) == 0


@pytest.mark.parametrize(
    ("method", "body", "headers", "status"),
    [
        ("POST", b"", FORM, 400),  # a POST that is not a one-click request
        ("POST", b"List-Unsubscribe=Yes", FORM, 400),
        ("POST", b"List-Unsubscribe=One-Click" + b"&x=" + b"y" * 5000, FORM, 413),
        ("PUT", b"List-Unsubscribe=One-Click", FORM, 405),
        ("DELETE", b"", {}, 405),
    ],
)
def test_malformed_requests_get_a_clear_4xx(shop, method, body, headers, status):
    url, runtime = shop
    token = sign_address(SECRET.encode(), "ana@example.com", "marketing")
    answer = httpx.request(method, f"{url}/u/{token}", content=body, headers=headers, timeout=10)
    assert answer.status_code == status
    assert "Traceback" not in answer.text
    assert runtime.redis.hlen(SUPPRESSION_KEY) == 0


def test_multipart_one_click_is_accepted(shop):
    url, runtime = shop
    token = sign_address(SECRET.encode(), "ana@example.com", "marketing")
    answer = httpx.post(
        f"{url}/u/{token}", files={"List-Unsubscribe": (None, "One-Click")}, timeout=10
    )
    assert answer.status_code == 200
    assert runtime.suppression.entry("ana@example.com") is not None


def test_a_burst_from_one_client_is_limited_and_writes_nothing(shop):
    url, runtime = shop
    forged = "2.bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA"
    with httpx.Client(timeout=10) as client:
        codes = [
            client.post(f"{url}/u/{forged}", headers=FORM, **ONE_CLICK).status_code
            for _ in range(UNSUBSCRIBE_REQUESTS_PER_MINUTE + 20)
        ]
    assert codes[:UNSUBSCRIBE_REQUESTS_PER_MINUTE] == [200] * UNSUBSCRIBE_REQUESTS_PER_MINUTE
    assert set(codes[UNSUBSCRIBE_REQUESTS_PER_MINUTE:]) == {429}
    assert runtime.redis.hlen(SUPPRESSION_KEY) == 0


def test_redis_down_is_503_so_the_provider_tries_again(make_settings, smtp_env):  # type: ignore[no-untyped-def]
    settings = make_settings(
        CRM_UNSUBSCRIBE_SECRET=SECRET,
        CRM_UNSUBSCRIBE_URL=BASE,
        CRM_INTAKE_TOKEN="token-0123456789abcdef",
        **smtp_env,
    )
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    runtime = Runtime(settings, redis_client=dead)
    token = sign_address(SECRET.encode(), "ana@example.com", "marketing")
    try:
        for url in serve(runtime, IntakeAuth.from_settings(settings, "::1")):
            answer = httpx.post(f"{url}/u/{token}", headers=FORM, timeout=10, **ONE_CLICK)
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert "Traceback" not in answer.text
    finally:
        runtime.close()
