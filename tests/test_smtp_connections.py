"""SMTP connections: kept open across messages, STARTTLS, implicit TLS and authentication
against a real aiosmtpd server with a certificate made for the test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult

from tests.conftest import SinkController, SmtpSink
from tests.faultkit import free_port
from worker.channels import Outgoing, SmtpChannel
from worker.errors import SenderRejectedError, TransientDeliveryError, UncertainDeliveryError

PASSWORD = "s3cret-password"


def _mail(n: int) -> Outgoing:
    message_id = f"<conn-{n}@shop.example.com>"
    data = f"Subject: {n}\r\nMessage-ID: {message_id}\r\n\r\nhello\r\n".encode()
    return Outgoing(f"k{n}", "email", "crm@shop.example.com", "a@example.com", message_id, data)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
    ok = auth.login == b"crm" and auth.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def serve(certificate: tuple[Path, Path]) -> Iterator[Any]:
    controllers: list[SinkController] = []

    def start(mode: str, *, pipelining: bool = True) -> SmtpSink:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        sink = SmtpSink("127.0.0.1", free_port(), pipelining=pipelining)
        options: dict[str, Any] = {"authenticator": _authenticator}
        if mode == "tls":
            # aiosmtpd only counts STARTTLS as TLS for AUTH; this connection is TLS throughout.
            options.update(ssl_context=context, auth_require_tls=False)
        else:
            options.update(tls_context=context, require_starttls=True)
        controller = SinkController(sink, hostname=sink.host, port=sink.port, **options)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()


def _channel(make_settings: Any, sink: SmtpSink, **env: str) -> SmtpChannel:
    return SmtpChannel(make_settings(CRM_SMTP_HOST=sink.host, CRM_SMTP_PORT=str(sink.port), **env))


def _tls_channel(
    make_settings: Any, sink: SmtpSink, mode: str, certificate: Any, password: str = PASSWORD
) -> SmtpChannel:
    """A channel that logs in as ``crm`` over ``mode`` (tls or starttls), trusting our CA."""
    return _channel(
        make_settings,
        sink,
        CRM_SMTP_SECURITY=mode,
        CRM_SMTP_CA_FILE=str(certificate[0]),
        CRM_SMTP_USERNAME="crm",
        CRM_SMTP_PASSWORD=password,
    )


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "stepwise"])
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_tls_modes_with_authentication_reuse_one_connection(
    make_settings, serve, certificate, mode, pipelining, caplog
):
    sink = serve(mode, pipelining=pipelining)
    channel = _tls_channel(make_settings, sink, mode, certificate)
    try:
        for n in range(5):
            channel.send(_mail(n))
    finally:
        channel.close()
    assert len(sink.message_ids()) == 5
    # One connection for five messages (STARTTLS says EHLO twice: before and after TLS).
    assert sink.ehlo_count == (2 if mode == "starttls" else 1)
    # Sent inside TLS by our session, pipelined when offered.
    assert sink.pipelined_mails == (5 if pipelining else 0)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_a_tls_connection_lost_after_the_content_is_unknown(
    make_settings, serve, certificate, mode
):
    sink = serve(mode)
    sink.drop_after_data = 1
    channel = _tls_channel(make_settings, sink, mode, certificate)
    try:
        with pytest.raises(UncertainDeliveryError, match="may have been delivered"):
            channel.send(_mail(1))
        channel.send(_mail(2))  # over a new connection
    finally:
        channel.close()
    assert len(sink.message_ids()) == 2
    assert sink.ehlo_count == (4 if mode == "starttls" else 2)


def test_an_untrusted_certificate_is_retried_later_not_sent_in_clear(make_settings, serve):
    sink = serve("starttls")
    channel = _channel(make_settings, sink, CRM_SMTP_SECURITY="starttls")  # system CAs only
    try:
        with pytest.raises(TransientDeliveryError, match="cannot connect"):
            channel.send(_mail(1))
    finally:
        channel.close()
    assert sink.received == []


def test_wrong_password_is_our_problem_and_never_logged(make_settings, serve, certificate, caplog):
    sink = serve("tls")
    channel = _tls_channel(make_settings, sink, "tls", certificate, password="wrong-" + PASSWORD)
    try:
        with pytest.raises(SenderRejectedError) as caught:
            channel.send(_mail(1))
    finally:
        channel.close()
    assert caught.value.code == 535
    assert PASSWORD not in str(caught.value) and PASSWORD not in caplog.text
    assert sink.received == []
