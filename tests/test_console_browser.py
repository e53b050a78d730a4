"""The web console in a real browser (headless Chromium, Debian packages ``chromium`` and
``chromium-driver``), served by uvicorn as ``crm-worker console`` serves it, against a real
Redis, the sample CRM data and the test SMTP server.

Driven as a sales manager would: log in, open every page, make an invalid edit (refused, the
diagnostic shown beside its line, the file untouched), make a valid one (the next
``crm-worker plan`` sends at the new hour), look at a preview and send a test copy to
oneself (received by the SMTP server), retry a failed delivery. A screenshot of each page goes
to ``docs/console/`` for the README.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browserkit import headless_chromium
from tests.consolekit import EDITOR, PASSWORD, add_logins, console_files, serve_console
from tests.test_cli import crm_worker
from worker.localtime import parse_instant

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "console"
#: An instant at which the sample data has birthdays due (at 09:00 local) and a failure.
NOW = "2026-03-15T23:00:00Z"
#: A sample customer whose birthday mail is refused by the SMTP server (550 5.1.1).
BOUNCING = "leo.davies337@example.net"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from headless_chromium("--window-size=1280,900")


@pytest.fixture
def console(
    tmp_path: Path, make_runtime: Any, make_settings: Any, smtp_server: Any, smtp_env: Any
) -> Iterator[tuple[str, dict[str, str], Any]]:
    """The console over a copy of the sample data after one delivered pass (one mail refused),
    its settings and the SMTP server."""
    env = {**console_files(tmp_path), **smtp_env, "CRM_DATA_DIR": str(tmp_path / "var")}
    runtime = make_runtime(make_settings(**env))
    add_logins(runtime)
    smtp_server.refuse_rcpt[BOUNCING] = "550 5.1.1 no such user"
    runtime.run_once(parse_instant(NOW))
    received = len(smtp_server.received)
    assert received > 0
    yield from (
        (url, env, smtp_server)
        for url in serve_console(runtime)  # the generator stops the server when closed
    )


def shot(browser: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(int(height) + 120, 700), 2400))
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    browser.set_window_size(1280, 900)


def plan_json(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """``crm-worker plan --json --all --now NOW --rule birthday-greeting``, a process of its
    own as a person runs it."""
    if os.environ.get("REDIS_URL"):
        env = {**env, "CRM_REDIS_URL": os.environ["REDIS_URL"]}
    args = ("-q", "plan", "--json", "--all", "--now", NOW, "--rule", "birthday-greeting")
    done = crm_worker(*args, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_sales_manager_works_in_the_console(
    browser: Any, console: tuple[str, dict[str, str], Any], tmp_path: Path
) -> None:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, env, smtp = console

    def find(by: str, what: str) -> Any:
        # A submitted form's answer may still be loading: wait for what it should show.
        return WebDriverWait(browser, 30).until(lambda driver: driver.find_element(by, what))

    def says(css: str, text: str) -> str:
        """The text of ``css`` once it contains ``text`` (the page before a submitted form's
        answer may have an element of the same kind, saying something else)."""

        def shown(driver: Any) -> str | None:
            try:
                found = str(driver.find_element(By.CSS_SELECTOR, css).text)
            except (NoSuchElementException, StaleElementReferenceException):
                return None
            return found if text in found else None

        return str(WebDriverWait(browser, 30).until(shown))

    # Every page needs a login: the console sends the browser to the login page first.
    browser.get(f"{url}/rules")
    assert "/login" in browser.current_url
    find(By.NAME, "name").send_keys(EDITOR)
    find(By.NAME, "password").send_keys(PASSWORD)
    shot(browser, "login")
    find(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, 30).until(lambda driver: driver.current_url == f"{url}/rules")

    # /rules: every shipped rule, valid, its trigger in words, sends in the last 30 days.
    text = find(By.TAG_NAME, "main").text
    for rule_id in ("birthday-greeting", "complaint-follow-up", "purchase-thank-you"):
        assert rule_id in text
    assert "yearly on the birthday at 09:00 customer time" in text
    row = find(By.CSS_SELECTOR, "tr.status-valid").text
    assert "valid" in row
    shot(browser, "rules")

    # /rules/<id>: an invalid edit is refused, with check's diagnostic beside its line.
    find(By.LINK_TEXT, "birthday-greeting").click()
    rule_file = Path(env["CRM_RULES_DIR"]) / "birthday-greeting.yaml"
    original = rule_file.read_text(encoding="utf-8")
    editor = find(By.NAME, "text")
    shot(browser, "rule")
    editor.clear()
    editor.send_keys(original.replace('at: "09:00"', 'at: "25:00"'))
    find(By.CSS_SELECTOR, "form.editor button").click()
    flagged = find(By.CSS_SELECTOR, "tr.has-problem")
    assert '"25:00"' in flagged.text
    assert "8:" in flagged.find_element(By.CSS_SELECTOR, ".diagnostic").text
    says(".message", "Not saved")
    assert rule_file.read_text(encoding="utf-8") == original
    shot(browser, "rule-refused")

    # A valid edit is saved (the old file backed up) and the next `plan` goes by it.
    before = plan_json(env, tmp_path)
    assert before and {item["due_local"][11:16] for item in before} == {"09:00"}
    editor = find(By.NAME, "text")
    editor.clear()
    editor.send_keys(original.replace('at: "09:00"', 'at: "11:00"'))
    find(By.CSS_SELECTOR, "form.editor button").click()
    says(".message", "Saved")
    assert 'at: "11:00"' in rule_file.read_text(encoding="utf-8")
    backups = list((Path(env["CRM_DATA_DIR"]) / "rule-backups").iterdir())
    assert [b.read_text(encoding="utf-8") for b in backups] == [original]
    after = plan_json(env, tmp_path)
    assert after and {item["due_local"][11:16] for item in after} == {"11:00"}

    # /upcoming: a calendar of sends per day and rule.
    browser.get(f"{url}/upcoming?days=14")
    calendar = find(By.TAG_NAME, "main").text
    assert "to send" in calendar
    shot(browser, "upcoming")

    # /customers/<id>: plan --explain per rule, and the customer's deliveries.
    browser.get(f"{url}/customers/337")
    page = find(By.TAG_NAME, "main").text
    assert "birthday-greeting" in page
    assert "failed" in page  # the refused birthday mail, from the delivery log
    assert "all mail since" in page  # its address went on the suppression list
    shot(browser, "customer")

    # /preview/<rule>/<customer>: the real message, and a test copy to oneself.
    browser.get(f"{url}/preview/birthday-greeting/1?now=2026-02-28T09:30:00Z")
    frame = find(By.CSS_SELECTOR, "iframe.mail")
    assert frame.get_attribute("sandbox") == ""
    assert "Subject" in find(By.CSS_SELECTOR, "table.headers").text
    browser.switch_to.frame(frame)
    assert browser.find_element(By.TAG_NAME, "body").text.strip()  # the HTML part shows
    browser.switch_to.default_content()
    shot(browser, "preview")
    received = len(smtp.received)
    find(By.CSS_SELECTOR, "form.send-test button").click()
    says(".message", f"Test copy sent to {EDITOR}")
    assert len(smtp.received) == received + 1
    copy = smtp.received[-1]
    assert copy.recipients == [EDITOR]
    assert copy.message["Subject"]

    # /deliveries: the log with filters, the work in progress, and "retry failed".
    browser.get(f"{url}/deliveries?since=30d&state=failed")
    log = find(By.TAG_NAME, "main").text
    assert BOUNCING in log
    shot(browser, "deliveries")
    find(By.CSS_SELECTOR, "form.retry button").click()
    says(".message", "Queued 1 delivery(ies) again")
