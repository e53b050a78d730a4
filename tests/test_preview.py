"""`crm-worker preview`: what a sales manager sees is what the customer gets; nothing is sent."""

from __future__ import annotations

import json
import re

from tests.test_cli import base_env, crm_worker
from tests.test_headers import parsed, write_crm
from worker.messages.mail import message_id_for
from worker.messages.unsubscribe import read_token

NOW = "2026-03-14T10:00:00Z"
SECRET = "preview secret"
CUSTOMERS = [
    {"id": "1", "email": "j@example.de", "first_name": "Jürgen", "locale": "de-AT"},
    {"id": "2", "email": "o@example.com", "first_name": "Otto", "email_opt_in": "false"},
]


def env_for(tmp_path, smtp_server):
    crm = write_crm(tmp_path / "crm", CUSTOMERS)
    return base_env(tmp_path) | {
        "CRM_SOURCE": str(crm),
        "CRM_SMTP_HOST": smtp_server.host,
        "CRM_SMTP_PORT": str(smtp_server.port),
        "CRM_SMTP_SECURITY": "none",
        "CRM_MAIL_FROM": "Shop <crm@shop.example.com>",
        "CRM_UNSUBSCRIBE_SECRET": SECRET,
    }


def test_preview_shows_the_real_message_and_sends_only_a_test_copy(
    tmp_path, smtp_server, redis_client
):
    env = env_for(tmp_path, smtp_server)
    html_file = tmp_path / "out" / "preview.html"
    result = crm_worker(
        "preview", "birthday-greeting", "--customer", "1", "--now", NOW,
        "--html", str(html_file), "--send-to", "Manager@Example.com",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = "birthday-greeting:customer:1:2026/email"
    assert f"key {key}" in result.stdout
    assert "Subject: Alles Gute zum Geburtstag, Jürgen!" in result.stdout
    assert "To: Jürgen <j@example.de>" in result.stdout
    assert f"Message-ID: {message_id_for(key, 'shop.example.com')}" in result.stdout
    assert "-- text --\nHallo Jürgen," in result.stdout
    assert '<html lang="de">' in result.stdout
    assert html_file.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

    # Only the test copy reached the server: to the manager, with its own Message-ID and an
    # unsubscribe link that cannot unsubscribe the customer from email.
    (copy,) = smtp_server.received
    assert copy.recipients == ["Manager@example.com"]
    message = parsed(copy.data)
    assert message["To"] == "Manager@example.com"
    assert message["Subject"] == "Alles Gute zum Geburtstag, Jürgen!"
    assert message["Message-ID"] != message_id_for(key, "shop.example.com")
    token = re.search(r"/unsubscribe/([\w.-]+)>", message["List-Unsubscribe"])
    assert token is not None
    request = read_token([SECRET.encode()], token[1])
    assert (request.address, request.kind) == ("manager@example.com", "preview")
    # Nothing was claimed: a real pass afterwards still sends the birthday mail.
    assert redis_client.keys("crm:delivery:*") == []
    run = crm_worker("run", "--once", "--now", NOW, env=env, cwd=tmp_path)
    assert "sent 1," in run.stdout, run.stderr
    assert smtp_server.received[-1].recipients == ["j@example.de"]


def test_preview_says_why_a_customer_would_not_get_it(tmp_path, smtp_server, redis_client):
    env = env_for(tmp_path, smtp_server)
    result = crm_worker(
        "preview", "birthday-greeting", "--customer", "2", "--now", NOW,
        "--send-to", "manager@example.com", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "not sent to customer 2: condition is false: customer.email_opt_in" in result.stderr
    assert smtp_server.received == []


def test_preview_of_an_unknown_rule_or_customer(tmp_path, smtp_server, redis_client):
    env = env_for(tmp_path, smtp_server)
    typo = crm_worker("preview", "birthday-greting", "--customer", "1", env=env, cwd=tmp_path)
    assert typo.returncode == 2
    assert "did you mean 'birthday-greeting'?" in typo.stderr
    nobody = crm_worker("preview", "birthday-greeting", "--customer", "99", env=env, cwd=tmp_path)
    assert nobody.returncode == 2
    assert "no customer '99'" in nobody.stderr


def test_preview_when_not_due_still_shows_the_message(tmp_path, smtp_server, redis_client):
    env = env_for(tmp_path, smtp_server)
    result = crm_worker(
        "preview", "birthday-greeting", "--customer", "1", "--now", "2026-07-01T10:00:00Z",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "note: not due at 2026-07-01T10:00:00+00:00" in result.stdout
    assert "Subject: Alles Gute zum Geburtstag, Jürgen!" in result.stdout


def test_preview_of_a_webhook_rule_shows_the_body_it_posts(tmp_path, redis_client):
    crm = tmp_path / "crm"
    crm.mkdir()
    (crm / "customers.csv").write_text(
        "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,"
        'email_opt_in\n7,ana@example.com,Ana,"Ruiz ""R""",1990-03-14,en,UTC,m1@example.com,true\n',
        encoding="utf-8",
    )
    (crm / "purchases.csv").write_text(
        "id,customer_id,product,purchased_at,delivered_at\n", encoding="utf-8"
    )
    (crm / "complaints.csv").write_text(
        "id,customer_id,subject,opened_at,resolved_at\nC7,7,Wrong size,2026-03-12T10:00:00Z,\n",
        encoding="utf-8",
    )
    env = base_env(tmp_path) | {
        "CRM_SOURCE": str(crm),
        "CRM_WEBHOOKS": '{"sales-chat": "https://hooks.example.com/T0KEN"}',
    }
    result = crm_worker(
        "preview", "complaint-sales-chat", "--customer", "7", "--now", NOW,
        "--send-to", "me@example.com", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "== complaint-sales-chat → webhook sales-chat (for m1@example.com) · template "
        "complaint-alert · due 2026-03-14 10:00 UTC · key "
        "complaint-sales-chat:complaint:C7:1/webhook"
    )
    assert lines[1:4] == ["ledger: new", "Content-Type: application/json", "-- body --"]
    assert json.loads("\n".join(lines[4:])) == {
        "text": 'Complaint C7 (Wrong size) from Ana Ruiz "R" is still open since '
        "2026-03-12T10:00:00+00:00. Account manager: m1@example.com"
    }
    assert "T0KEN" not in result.stdout + result.stderr
    assert "webhook posts get no test copy" in result.stderr


def test_preview_html_writes_every_mail_of_the_rule(tmp_path, redis_client):
    """The customer's follow-up in her language and the account manager's alert in the
    internal one (CRM_INTERNAL_LOCALE), each written to its own HTML file."""
    crm = tmp_path / "crm"
    crm.mkdir()
    (crm / "customers.csv").write_text(
        "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,"
        "email_opt_in\n7,ana@example.com,Ana,Ruiz,1990-03-14,es,Europe/Madrid,m1@example.com,true\n",
        encoding="utf-8",
    )
    (crm / "purchases.csv").write_text(
        "id,customer_id,product,purchased_at,delivered_at\n", encoding="utf-8"
    )
    (crm / "complaints.csv").write_text(
        "id,customer_id,subject,opened_at,resolved_at\nC7,7,Talla incorrecta,"
        "2026-03-12T10:00:00Z,\n",
        encoding="utf-8",
    )
    env = base_env(tmp_path) | {"CRM_SOURCE": str(crm), "CRM_INTERNAL_LOCALE": "de"}
    html_file = tmp_path / "out" / "preview.html"
    result = crm_worker(
        "preview", "complaint-follow-up", "--customer", "7", "--now", NOW,
        "--html", str(html_file), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    customer = html_file.read_text(encoding="utf-8")
    alert = (tmp_path / "out" / "preview.escalation.html").read_text(encoding="utf-8")
    assert '<html lang="es">' in customer and "Hola, Ana:" in customer
    assert '<html lang="de">' in alert and "Reklamation C7 ist noch offen" in alert
    # The alert names the customer's zone beside the account manager's (UTC here).
    assert "Europe/Madrid (10:00 UTC)" in alert
    assert f"wrote the HTML part for m1@example.com to {tmp_path / 'out'}" in result.stderr
