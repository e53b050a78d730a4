"""Hostile or runaway template edits: reported by `check`, never rendered into a sent message."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO
from tests.test_cli import base_env, crm_worker
from tests.test_headers import write_crm
from worker.authoring.validation import check_all
from worker.localtime import parse_instant

NOW = parse_instant("2026-03-14T10:00:00Z")
#: From ../shared/BAD_INPUTS.md: sandbox escapes, then a CPU bomb and a memory bomb.
PAYLOADS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format(customer) }}",
    "{{ customer.__class__.__init__.__globals__ }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**8 }}",
]


def poisoned_templates(tmp_path, payload: str):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    target = templates / "birthday" / "de" / "body.txt.j2"
    target.write_text(target.read_text(encoding="utf-8") + payload + "\n", encoding="utf-8")
    return templates, target


@pytest.mark.parametrize("payload", PAYLOADS)
def test_check_reports_the_payload_in_its_file(make_runtime, make_settings, tmp_path, payload):
    templates, target = poisoned_templates(tmp_path, payload)
    runtime = make_runtime(make_settings(CRM_TEMPLATES_DIR=str(templates)))
    problems = check_all(runtime.catalog, runtime.renderer, runtime.source)
    assert [p.path for p in problems] == [target]
    assert any(
        word in problems[0].message for word in ("sandbox", "longer than", "larger than", "unsafe")
    ), problems[0].message


def test_check_command_fails_on_a_sandbox_escape(tmp_path, redis_client):
    templates, target = poisoned_templates(tmp_path, PAYLOADS[0])
    env = base_env(tmp_path) | {"CRM_TEMPLATES_DIR": str(templates)}
    result = crm_worker("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert str(target) in result.stdout and "sandbox" in result.stdout


@pytest.mark.parametrize("payload", [PAYLOADS[0], PAYLOADS[2], PAYLOADS[5]])
def test_a_poisoned_template_fails_its_message_and_nothing_leaks(
    make_runtime, make_settings, smtp_server, tmp_path, payload
):
    templates, _ = poisoned_templates(tmp_path, payload)
    crm = write_crm(
        tmp_path / "crm",
        [
            {"id": "1", "email": "de@example.com", "first_name": "Jörg", "locale": "de"},
            {"id": "2", "email": "en@example.com", "first_name": "Ann", "locale": "en"},
        ],
    )
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_TEMPLATES_DIR=str(templates),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
        )
    )
    summary = runtime.run_once(NOW)
    assert summary.states == {"sent": 1, "failed": 1}
    # The German message was never sent, half-rendered or otherwise; the English one was.
    assert [r.recipients for r in smtp_server.received] == [["en@example.com"]]
    # Nothing of what the payload would print leaks into the other message (the layout's own
    # class="…" attributes are markup, not a leak).
    sent = smtp_server.received[0].data
    assert b"<class" not in sent and b"&lt;class" not in sent and b"xxxxxxxxxx" not in sent
    failed = runtime.ledger.get("birthday-greeting:customer:1:2026/email")
    assert failed["state"] == "failed"
    assert "birthday/de/body.txt.j2" in failed["reason"]
