"""DKIM: the bytes the SMTP server received verify, and both unsubscribe headers are signed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import dkim
import pytest

from tests.test_headers import write_crm
from worker.errors import ConfigError
from worker.localtime import parse_instant

NOW = parse_instant("2026-03-14T10:00:00Z")
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory) -> tuple[Path, bytes]:
    """A fresh RSA key (PEM file) and its public key as published in DNS."""
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_received_mail_carries_a_valid_signature_over_both_unsubscribe_headers(
    make_runtime, make_settings, smtp_server, tmp_path, key_pair
):
    key, record = key_pair
    crm = write_crm(
        tmp_path / "crm",
        [{"id": "1", "email": "ann@example.com", "first_name": "Änn", "locale": "de"}],
    )
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_SMTP_HOST=smtp_server.host,
            CRM_SMTP_PORT=str(smtp_server.port),
            CRM_SMTP_SECURITY="none",
            CRM_DKIM_SELECTOR="crm2026",
            CRM_DKIM_PRIVATE_KEY_FILE=str(key),
        )
    )
    assert runtime.run_once(NOW).states["sent"] == 1
    (mail,) = smtp_server.received
    asked: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return record

    assert mail.data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(mail.data, dnsfunc=dns)
    assert asked == [b"crm2026._domainkey.shop.example.com."]
    header = mail.data.split(b"\r\n\r\n", 1)[0].decode()
    signed = re.search(r"\bh=([^;]+);", header.replace("\r\n", "").replace(" ", ""))
    assert signed is not None
    names = signed[1].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "message-id"} <= set(names)
    # Any change on the way breaks the signature: a rewritten unsubscribe link, a new Bcc.
    forged = re.sub(rb"/unsubscribe/[\w.-]+", b"/unsubscribe/1.forged.x", mail.data, count=1)
    assert not dkim.verify(forged, dnsfunc=dns)


def test_mail_re_encoded_for_a_relay_without_8bitmime_is_signed_again(
    make_runtime, make_settings, seven_bit_smtp_server, tmp_path, key_pair
):
    key, record = key_pair
    crm = write_crm(
        tmp_path / "crm",
        [{"id": "1", "email": "ann@example.com", "first_name": "Jürgen", "locale": "de"}],
    )
    runtime = make_runtime(
        make_settings(
            CRM_SOURCE=str(crm),
            CRM_SMTP_HOST=seven_bit_smtp_server.host,
            CRM_SMTP_PORT=str(seven_bit_smtp_server.port),
            CRM_SMTP_SECURITY="none",
            CRM_DKIM_SELECTOR="crm2026",
            CRM_DKIM_PRIVATE_KEY_FILE=str(key),
        )
    )
    assert runtime.run_once(NOW).states["sent"] == 1
    (mail,) = seven_bit_smtp_server.received
    assert mail.data.isascii() and b"Content-Transfer-Encoding: 8bit" not in mail.data
    assert b"Content-Transfer-Encoding: quoted-printable" in mail.data  # re-encoded
    # One signature, over the 7-bit body that was sent (the composed one no longer matches).
    assert mail.data.startswith(b"DKIM-Signature: ") and mail.data.count(b"DKIM-Signature:") == 1
    assert dkim.verify(mail.data, dnsfunc=lambda name, timeout=5: record)
    assert "Jürgen" in mail.message.get_body(("plain",)).get_content()


def test_a_key_file_that_is_not_a_key_is_a_configuration_error(
    make_runtime, make_settings, tmp_path
):
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello", encoding="utf-8")
    runtime = make_runtime(
        make_settings(CRM_DKIM_SELECTOR="s1", CRM_DKIM_PRIVATE_KEY_FILE=str(bad))
    )
    with pytest.raises(ConfigError, match="CRM_DKIM_PRIVATE_KEY_FILE"):
        runtime.deliverer  # noqa: B018 - building it reads the key
