"""What `check` warns about without failing: a marketing rule that does not look at opt-in, and
customers whose language has no template folder; `plan --explain` says the latter too."""

from __future__ import annotations

from pathlib import Path

from tests.faultkit import write_crm_files
from tests.test_cli import base_env, crm_worker

CUSTOMERS = (
    "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,email_opt_in\n"
    "1,zoe@example.fr,Zoé,Martin,1990-03-14,fr-FR,Europe/Paris,m@example.com,true\n"
    "2,ann@example.com,Ann,Lee,1990-03-14,en,UTC,m@example.com,true\n"
    "3,jo@example.fr,Jo,Roy,1990-03-14,fr,Europe/Paris,m@example.com,true\n"
)
NO_OPT_IN = """id: birthday
trigger: {birthday: {at: "09:00"}}
send: [{channel: email, template: birthday, to: customer.email}]
"""
SERVICE = """id: follow-up
kind: service
trigger: {unresolved: {after: 2d}}
send: [{channel: email, template: complaint-follow-up, to: customer.email}]
"""


def _world(tmp_path: Path, rules: dict[str, str]) -> dict[str, str]:
    crm = write_crm_files(tmp_path / "crm", CUSTOMERS)
    folder = tmp_path / "rules"
    folder.mkdir()
    for name, text in rules.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return base_env(tmp_path) | {"CRM_SOURCE": str(crm), "CRM_RULES_DIR": str(folder)}


def test_check_warns_about_opt_in_and_fallback_languages_and_still_passes(tmp_path, redis_client):
    env = _world(tmp_path, {"birthday": NO_OPT_IN, "follow-up": SERVICE})
    result = crm_worker("-q", "check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = tmp_path / "rules"
    assert result.stdout.splitlines() == [
        f"{rules / 'birthday.yaml'}:2:10: warning: a marketing rule that does not check opt-in; "
        "add `when: customer.email_opt_in`, or write `kind: service` for mail about the "
        "customer's own case (a complaint, a delivery)",
        f"{rules / 'birthday.yaml'}:3:35: warning: template 'birthday' has no fr/ folder: "
        "1 customer(s) with locale 'fr' get 'en'",
        f"{rules / 'birthday.yaml'}:3:35: warning: template 'birthday' has no fr/ folder: "
        "1 customer(s) with locale 'fr-FR' get 'en'",
        f"{rules / 'follow-up.yaml'}:4:35: warning: template 'complaint-follow-up' has no fr/ "
        "folder: 1 customer(s) with locale 'fr' get 'en'",
        f"{rules / 'follow-up.yaml'}:4:35: warning: template 'complaint-follow-up' has no fr/ "
        "folder: 1 customer(s) with locale 'fr-FR' get 'en'",
    ]
    assert "2 rule(s), templates valid, 5 warning(s)" in result.stderr


def test_plan_explain_says_when_a_reader_gets_another_language(tmp_path, redis_client):
    rule = NO_OPT_IN.replace("send:", "when: customer.email_opt_in\nsend:")
    env = _world(tmp_path, {"birthday": rule})
    result = crm_worker(
        "-q", "plan", "--customer", "1", "--explain", "--json", "--now", "2026-03-14T08:30:00Z",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "due 2026-03-14 09:00 Europe/Paris (08:00 UTC); written in en: template 'birthday' "
        "has no fr/ folder"
    ) in result.stdout
