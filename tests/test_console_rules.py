"""The pieces of the console that are not pages: a rule edit checked as ``check`` checks it
and written atomically with a backup, the calendar of what goes out when, triggers in words,
and ``crm-worker console-user``."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.consolekit import console_files
from tests.test_cli import crm_worker
from worker.authoring.rule_edit import digest, edit_rule
from worker.authoring.upcoming import upcoming
from worker.authoring.wording import describe_trigger
from worker.rules.loader import load_rule_text
from worker.web.console import ConsoleUsers

NOW = datetime(2026, 3, 14, 10, tzinfo=UTC)
BIRTHDAY = "birthday-greeting.yaml"


@pytest.fixture
def parts(tmp_path: Path, make_runtime: Any, make_settings: Any) -> Any:
    return make_runtime(make_settings(**console_files(tmp_path)))


def _edit(runtime: Any, text: str, *, seen: str | None = None, name: str = BIRTHDAY) -> Any:
    path = runtime.settings.rules_dir / name
    old = path.read_text(encoding="utf-8")
    return edit_rule(
        path,
        text,
        seen=digest(old) if seen is None else seen,
        backup_dir=runtime.settings.data_dir / "rule-backups",
        now=NOW,
        renderer=runtime.renderer,
        source=runtime.source,
        webhooks=runtime.settings.webhooks.keys(),
    )


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        (('at: "09:00"', 'at: "25:00"'), 8, "at"),
        (("  birthday:", "  birthdy:"), 6, "did you mean 'birthday'"),
        (("when: customer.email_opt_in", "when: customer.email_opt"), 10, "email_opt_in"),
        (("template: birthday", "template: birthdya"), 14, "did you mean 'birthday'"),
        (("id: birthday-greeting", "id: purchase-anniversary"), 1, "purchase-anniversary"),
        (("    field: customer.birthday", "\tfield: customer.birthday"), 7, ""),
    ],
)
def test_an_invalid_edit_is_never_written(
    parts: Any, change: tuple[str, str], where: int, says: str
) -> None:
    path = parts.settings.rules_dir / BIRTHDAY
    old = path.read_bytes()
    text = old.decode().replace(*change)
    assert text != old.decode()
    edit = _edit(parts, text)
    assert not edit.saved
    assert edit.problems, "the edit was refused without saying why"
    # Each about this file: in it, or (the same id twice) in the other file, naming it.
    assert all(p.path == path or str(path) in p.message for p in edit.problems)
    assert any(abs(p.line - where) <= 1 for p in edit.problems if p.path == path) or not [
        p for p in edit.problems if p.path == path
    ], edit.problems
    assert says in " ".join(p.message for p in edit.problems)
    assert path.read_bytes() == old
    assert not (parts.settings.data_dir / "rule-backups").exists()


def test_a_valid_edit_is_written_with_a_backup_and_reloaded(parts: Any) -> None:
    path = parts.settings.rules_dir / BIRTHDAY
    old = path.read_text(encoding="utf-8")
    # A browser sends a text area's lines with CRLF; the LF file stays LF.
    text = old.replace('at: "09:00"', 'at: "11:00"').replace("\n", "\r\n")
    edit = _edit(parts, text)
    assert edit.saved, edit.problems
    assert path.read_bytes() == old.replace('at: "09:00"', 'at: "11:00"').encode()
    assert edit.backup is not None
    assert edit.backup.read_text(encoding="utf-8") == old
    assert edit.backup.parent == parts.settings.data_dir / "rule-backups"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    parts.catalog.refresh()
    rule = parts.catalog.get("birthday-greeting")
    assert rule.trigger.spec.at.hour == 11


def test_an_edit_of_a_file_changed_meanwhile_is_not_written(parts: Any) -> None:
    path = parts.settings.rules_dir / BIRTHDAY
    old = path.read_text(encoding="utf-8")
    seen = digest(old)
    path.write_text(old.replace("grace: 1d", "grace: 2d"), encoding="utf-8")
    edit = _edit(parts, old.replace('at: "09:00"', 'at: "11:00"'), seen=seen)
    assert edit.stale and not edit.saved
    assert "grace: 2d" in path.read_text(encoding="utf-8")


def test_upcoming_counts_sends_and_skips_per_day_and_rule(parts: Any) -> None:
    start = datetime(2026, 3, 13, tzinfo=UTC)
    found = upcoming(
        parts.catalog,
        parts.source,
        start,
        start + timedelta(days=3),
        default_zone=parts.default_zone,
        company=parts.settings.company,
        ledger=parts.ledger,
        suppression=parts.suppression,
    )
    assert found.sends_by_rule()["birthday-greeting"] > 0
    assert "purchase-thank-you" in found.event_rules
    days = {day for day, _ in found.days}
    assert min(days) >= start.date() - timedelta(days=1)
    assert max(days) <= (start + timedelta(days=3)).date() + timedelta(days=1)
    # The plan at each instant agrees: what the calendar says for the rule is what plan sends.
    skipped = [c for (_, rule), c in found.days.items() if c.skips]
    assert all(sum(c.reasons.values()) == c.skips for c in skipped)


@pytest.mark.parametrize(
    ("trigger", "words"),
    [
        (
            '{birthday: {at: "09:00"}}',
            "yearly on the birthday at 09:00 customer time (Feb 29 birthdays: Feb 28 in "
            "common years)",
        ),
        (
            '{anniversary: {field: purchase.purchased_at, years: [1, 2], at: "10:00"}}',
            "on the 1st, 2nd anniversary of purchase.purchased_at at 10:00 customer time",
        ),
        (
            "{after: {field: purchase.delivered_at, delay: 7d}}",
            "once, 7d after purchase.delivered_at",
        ),
        (
            "{unresolved: {after: 2d, every: 3d, times: 3}}",
            "while complaint.resolved_at is empty: 2d after complaint.opened_at, then every "
            "3d, at most 3 times",
        ),
        ("{event: {type: purchase.created}}", "as soon as the CRM reports purchase.created"),
    ],
)
def test_triggers_in_words(trigger: str, words: str) -> None:
    rule = load_rule_text(
        f"id: r\ntrigger: {trigger}\nsend: [{{channel: email, template: t, to: customer.email}}]\n",
        Path("r.yaml"),
    )
    assert describe_trigger(rule) == words


def test_console_user_add_list_remove(tmp_path: Path, redis_client: Any) -> None:
    env = {"CRM_DATA_DIR": str(tmp_path / "var")}
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]

    def run(*args: str, password: str = "") -> Any:
        import subprocess
        import sys

        full = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | env
        return subprocess.run(
            [sys.executable, "-c", "from worker.cli import main; main()", *args],
            input=password, env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    added = run("console-user", "add", "maria@shop.example.com", "--role", "editor",
                password="a long enough passphrase\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added console login maria@shop.example.com (editor)" in added.stderr
    short = run("console-user", "add", "bob", password="short\n")
    assert short.returncode == 2
    assert "shorter than 12" in short.stderr
    bad_role = run("console-user", "add", "bob", "--role", "admin", password="x" * 20)
    assert bad_role.returncode == 2
    listed = run("console-user", "list")
    assert listed.stdout.split() == ["maria@shop.example.com", "editor", "maria@shop.example.com"]
    if os.environ.get("REDIS_URL"):  # the same Redis as this test's: the hash is there
        users = ConsoleUsers(redis_client)
        assert users.verify("maria@shop.example.com", "a long enough passphrase") is not None
        assert users.verify("maria@shop.example.com", "wrong") is None
        raw = redis_client.hget("crm:console:users", "maria@shop.example.com").decode()
        assert "a long enough passphrase" not in raw and "$argon2id$" in raw
    assert run("console-user", "remove", "maria@shop.example.com").returncode == 0
    assert run("console-user", "remove", "maria@shop.example.com").returncode == 1
    assert run("console-user", "list").stdout.strip() == ""
    assert crm_worker("console-user", "--help", env=env, cwd=tmp_path).returncode == 0


def test_crm_worker_console_serves_until_sigterm(tmp_path: Path, redis_client: Any) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "CRM_DATA_DIR": str(tmp_path / "var"),
        **console_files(tmp_path),
    }
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | env
    process = subprocess.Popen(
        [sys.executable, "-c", "from worker.cli import main; main()", "console",
         "--port", str(port)],
        env=full, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("crm-worker console did not answer")
        assert login.status_code == 200
        assert 'name="csrf"' in login.text
        assert login.headers["content-security-policy"].startswith("default-src 'self'")
        assert httpx.get(f"http://127.0.0.1:{port}/rules").status_code == 303
        assert httpx.get(f"http://127.0.0.1:{port}/static/console.css").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"console on http://127.0.0.1:{port}/" in stderr
    assert "no console logins yet" in stderr


def test_an_edit_that_makes_a_template_wrong_is_refused_there(parts: Any) -> None:
    """The birthday rule is about customers; the complaint template reads complaint fields:
    ``check`` reports them in the template, and the edit that caused it is not written."""
    path = parts.settings.rules_dir / BIRTHDAY
    old = path.read_text(encoding="utf-8")
    edit = _edit(parts, old.replace("template: birthday", "template: complaint-follow-up"))
    assert not edit.saved
    assert edit.problems
    assert any("complaint-follow-up" in str(p.path) for p in edit.problems), edit.problems
    assert path.read_text(encoding="utf-8") == old


def test_a_problem_the_edit_did_not_bring_does_not_block_it(parts: Any) -> None:
    """A template already broken (another rule's) is check's problem, not this edit's."""
    broken = parts.settings.templates_dir / "purchase-anniversary" / "en" / "body.txt.j2"
    broken.write_text("{{ customer.frist_name }}\n", encoding="utf-8")
    path = parts.settings.rules_dir / BIRTHDAY
    edit = _edit(parts, path.read_text(encoding="utf-8").replace("grace: 1d", "grace: 2d"))
    assert edit.saved, edit.problems
