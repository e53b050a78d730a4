"""`crm-worker mailbox` over IMAPS and STARTTLS against a real Dovecot with a self-signed
certificate made for the test: the certificate is checked in both modes (trusted through
CRM_MAILBOX_CA_FILE, refused with a clear error without it, so STARTTLS really happens before
the login)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from imap_tools import MailBox

from tests import feedback_samples as samples
from tests.imap_server import ImapServer, dovecot, dovecot_binary
from tests.test_mailbox import USER_UNKNOWN, reader
from worker.errors import ConfigError, MailboxError

NOW = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def imaps() -> Iterator[ImapServer]:
    if dovecot_binary() is None:
        pytest.skip(
            "dovecot not found: `apt-get install dovecot-imapd` (the mailbox tests need it)"
        )
    with dovecot(tls=True) as server:
        yield server


def _env(server: ImapServer, mode: str, **extra: str) -> dict[str, str]:
    return {
        "CRM_MAILBOX_HOST": server.host,
        "CRM_MAILBOX_PORT": str(server.tls_port if mode == "tls" else server.port),
        "CRM_MAILBOX_TLS": mode,
        "CRM_MAILBOX_USER": server.user,
        "CRM_MAILBOX_PASSWORD": server.password,
    } | extra


def _deliver(server: ImapServer, mail: bytes) -> None:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    with MailBox(server.host, server.tls_port, ssl_context=context).login(
        server.user, server.password
    ) as box:
        box.append(mail, "INBOX")


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_a_bounce_is_read_over_tls_with_the_certificate_checked(
    imaps: ImapServer, make_runtime: Any, make_settings: Any, mode: str
) -> None:
    _deliver(imaps, samples.dsn(f"gone-{mode}@example.net", "5.1.1", USER_UNKNOWN))
    runtime = make_runtime(
        make_settings(**_env(imaps, mode, CRM_MAILBOX_CA_FILE=str(imaps.ca_file)))
    )
    done = reader(runtime).run_pass(NOW)
    assert done.counts["bounced"] == 1, done
    entry = runtime.suppression.entry(f"gone-{mode}@example.net")
    assert entry is not None and "5.1.1" in entry.reason


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_an_untrusted_certificate_is_refused_and_says_what_to_set(
    imaps: ImapServer, make_runtime: Any, make_settings: Any, mode: str
) -> None:
    runtime = make_runtime(make_settings(**_env(imaps, mode)))
    with pytest.raises(MailboxError) as refused:
        reader(runtime).run_pass(NOW)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "set CRM_MAILBOX_CA_FILE" in str(refused.value)


def test_a_missing_ca_file_is_refused_at_start(make_settings: Any, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="CRM_MAILBOX_CA_FILE: no file"):
        make_settings(CRM_MAILBOX_CA_FILE=str(tmp_path / "missing.pem"))
