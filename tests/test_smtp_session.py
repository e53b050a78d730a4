"""The SMTP dialogue of one message, against a real aiosmtpd server that offers PIPELINING and
one that does not (``any_smtp_server``): what each reply means, what the server received, and
that the connection stays usable (or is replaced) afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import SmtpSink
from tests.faultkit import free_port
from worker.channels import Outgoing, SmtpChannel
from worker.channels.smtp_session import envelope_address, wire_content
from worker.errors import (
    PermanentDeliveryError,
    RecipientRejectedError,
    SenderRejectedError,
    TransientDeliveryError,
    UncertainDeliveryError,
)


def _mail(n: int, recipient: str = "a@example.com", body: bytes = b"hello\r\n") -> Outgoing:
    message_id = f"<session-{n}@shop.example.com>"
    data = f"Subject: {n}\r\nMessage-ID: {message_id}\r\n\r\n".encode() + body
    return Outgoing(f"k{n}", "email", "crm@shop.example.com", recipient, message_id, data)


@pytest.fixture
def channel_for(make_settings: Any) -> Iterator[Any]:
    channels: list[SmtpChannel] = []

    def build(sink: SmtpSink, **env: str) -> SmtpChannel:
        settings = make_settings(
            CRM_SMTP_HOST=sink.host, CRM_SMTP_PORT=str(sink.port), CRM_SMTP_SECURITY="none", **env
        )
        channel = SmtpChannel(settings)
        channels.append(channel)
        return channel

    yield build
    for channel in channels:
        channel.close()


def test_commands_are_pipelined_only_when_the_server_offers_it(any_smtp_server, channel_for):
    channel = channel_for(any_smtp_server)
    for n in range(3):
        receipt = channel.send(_mail(n))
        assert receipt.detail == "250 2.0.0 OK queued"
    assert len(any_smtp_server.received) == 3
    assert any_smtp_server.pipelined_mails == (3 if any_smtp_server.pipelining else 0)
    assert any_smtp_server.ehlo_count == 1  # one connection for all


REFUSALS = [  # where the server refuses (the final reply is the one after the "."), with what
    ("mail", "550 5.7.1 Sender blocked", SenderRejectedError),
    ("mail", "451 4.3.0 Try again", TransientDeliveryError),
    ("rcpt", "550 5.1.1 <a@example.com>: user unknown", RecipientRejectedError),
    ("rcpt", "452 4.2.2 Mailbox full, try later", TransientDeliveryError),
    ("data-command", "554 5.7.1 Policy refusal", SenderRejectedError),
    ("data-command", "451 4.3.0 Local error", TransientDeliveryError),
    ("final", "554 5.6.0 Message content rejected", PermanentDeliveryError),
    ("final", "451 4.7.1 Greylisted", TransientDeliveryError),
]


def _refuse(sink: SmtpSink, where: str, reply: str) -> None:
    if where == "mail":
        sink.mail_replies.append(reply)
    elif where == "rcpt":
        sink.refuse_rcpt["a@example.com"] = reply
    elif where == "data-command":
        sink.data_command_replies.append(reply)
    else:
        sink.data_replies.append(reply)


@pytest.mark.parametrize(("where", "reply", "error"), REFUSALS)
def test_each_refusal_is_classified_by_its_step_and_the_connection_stays_usable(
    any_smtp_server, channel_for, where, reply, error
):
    _refuse(any_smtp_server, where, reply)
    channel = channel_for(any_smtp_server)
    with pytest.raises(error) as caught:
        channel.send(_mail(1))
    assert caught.value.code == int(reply[:3])
    assert reply[4:] in str(caught.value.reply)
    any_smtp_server.refuse_rcpt.clear()
    channel.send(_mail(2))  # after RSET, on the same connection
    assert any_smtp_server.message_ids() == ["<session-2@shop.example.com>"]
    assert any_smtp_server.ehlo_count == 1


def test_the_first_refusal_decides_when_later_replies_refuse_too(any_smtp_server, channel_for):
    # The server refuses MAIL; a pipelining client has already sent RCPT and DATA, which it
    # refuses as well (503, no MAIL): MAIL's 5.7.1 is the answer, not the 503s.
    any_smtp_server.mail_replies.append("550 5.7.1 Sender blocked")
    channel = channel_for(any_smtp_server)
    with pytest.raises(SenderRejectedError, match="refused by the SMTP server") as caught:
        channel.send(_mail(1))
    assert (caught.value.code, caught.value.reply) == (550, "5.7.1 Sender blocked")
    assert any_smtp_server.rcpt_attempts["a@example.com"] == 0  # 503 before the hook
    channel.send(_mail(2))
    assert len(any_smtp_server.received) == 1


def test_data_answered_354_after_a_refused_recipient_is_ended_empty(any_smtp_server, channel_for):
    any_smtp_server.accept_empty_data = True
    any_smtp_server.refuse_rcpt["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    channel = channel_for(any_smtp_server, CRM_SMTP_TIMEOUT_S="5")
    with pytest.raises(RecipientRejectedError) as caught:
        channel.send(_mail(1, recipient="gone@example.com"))
    assert caught.value.code == 550
    # A pipelining client got 354 and ended the data at once with a lone "."; one that sends
    # step by step never sent DATA.
    assert any_smtp_server.empty_data == (1 if any_smtp_server.pipelining else 0)
    channel.send(_mail(2))
    assert any_smtp_server.message_ids() == ["<session-2@shop.example.com>"]
    assert any_smtp_server.ehlo_count == 1


def test_multi_line_refusal_keeps_every_line(any_smtp_server, channel_for):
    any_smtp_server.refuse_rcpt["a@example.com"] = (
        "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        "550-5.1.1 Please try double-checking the recipient's email address.\r\n"
        "550 5.1.1 https://support.example.com/mail/?p=NoSuchUser"
    )
    channel = channel_for(any_smtp_server)
    with pytest.raises(RecipientRejectedError) as caught:
        channel.send(_mail(1))
    assert caught.value.code == 550
    assert caught.value.reply.splitlines() == [
        "5.1.1 The email account that you tried to reach does not exist.",
        "5.1.1 Please try double-checking the recipient's email address.",
        "5.1.1 https://support.example.com/mail/?p=NoSuchUser",
    ]


def test_replies_split_across_reads(any_smtp_server, channel_for):
    any_smtp_server.split_replies = True
    any_smtp_server.refuse_rcpt["gone@example.com"] = "550-5.1.1 no such user\r\n550 5.1.1 gone"
    channel = channel_for(any_smtp_server)
    channel.send(_mail(1))
    with pytest.raises(RecipientRejectedError) as caught:
        channel.send(_mail(2, recipient="gone@example.com"))
    assert caught.value.reply == "5.1.1 no such user\n5.1.1 gone"
    receipt = channel.send(_mail(3))
    assert receipt.detail == "250 2.0.0 OK queued"
    assert any_smtp_server.message_ids() == [
        "<session-1@shop.example.com>",
        "<session-3@shop.example.com>",
    ]


def test_connection_dropped_before_the_content_is_transient(any_smtp_server, channel_for):
    # The server read MAIL, RCPT and DATA (pipelined or not) and hung up before its 354.
    any_smtp_server.drop_at_data_command = 1
    channel = channel_for(any_smtp_server)
    with pytest.raises(TransientDeliveryError, match="connection lost"):
        channel.send(_mail(1))
    assert any_smtp_server.received == []
    channel.send(_mail(2))  # a new connection
    assert any_smtp_server.ehlo_count == 2 and len(any_smtp_server.received) == 1


def test_connection_dropped_after_the_content_is_unknown(any_smtp_server, channel_for):
    any_smtp_server.drop_after_data = 1
    channel = channel_for(any_smtp_server)
    with pytest.raises(UncertainDeliveryError, match="may have been delivered"):
        channel.send(_mail(1))
    assert len(any_smtp_server.received) == 1
    channel.send(_mail(2))
    assert any_smtp_server.ehlo_count == 2 and len(any_smtp_server.received) == 2


@pytest.mark.parametrize(
    ("step", "error", "arrived"),
    [("rcpt", TransientDeliveryError, 0), ("data", UncertainDeliveryError, 1)],
)
def test_a_server_slower_than_the_timeout(any_smtp_server, channel_for, step, error, arrived):
    any_smtp_server.delay_s[step] = 3.0
    channel = channel_for(any_smtp_server, CRM_SMTP_TIMEOUT_S="0.3")
    with pytest.raises(error, match=r"no reply within 0\.3 s"):
        channel.send(_mail(1))
    assert len(any_smtp_server.received) == arrived
    any_smtp_server.delay_s.clear()
    channel.send(_mail(2))  # the late reply must not pair with this message: a new connection
    assert any_smtp_server.ehlo_count == 2 and len(any_smtp_server.received) == arrived + 1


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("smtputf8", [True, False])
def test_non_ascii_recipient_needs_smtputf8(channel_for, pipelining, smtputf8):
    sink = SmtpSink("127.0.0.1", free_port(), pipelining=pipelining)
    controller = Controller(sink, hostname=sink.host, port=sink.port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        channel = channel_for(sink)
        if smtputf8:
            channel.send(_mail(1, recipient="jürgen@xn--mller-kva.de"))
            channel.send(_mail(2))
        else:
            with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
                channel.send(_mail(1, recipient="jürgen@xn--mller-kva.de"))
    finally:
        controller.stop()
    if smtputf8:
        first, second = sink.received
        assert first.recipients == ["jürgen@xn--mller-kva.de"] and "SMTPUTF8" in first.mail_options
        assert second.recipients == ["a@example.com"] and second.mail_options == []
    else:
        assert sink.received == [] and sink.rcpt_attempts == {}


LEADING_DOTS = (
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"a lone dot above; one below the next line\r\n"
    b"...\r\n"
    b" .not at the start\r\n"
    b"."
)


def test_lines_starting_with_a_dot_arrive_byte_identical(any_smtp_server, channel_for):
    message = _mail(1, body=LEADING_DOTS)
    channel_for(any_smtp_server).send(message)
    (received,) = any_smtp_server.received
    assert received.data == message.data + b"\r\n"  # the server un-stuffs; the last line ends


def test_bare_line_feeds_and_carriage_returns_go_out_as_crlf(any_smtp_server, channel_for):
    message = _mail(1, body=b"line one\nline two\rline three\r\n\n.dot after LF")
    channel_for(any_smtp_server).send(message)
    (received,) = any_smtp_server.received
    head = message.data[: message.data.index(b"\r\n\r\n") + 4]
    assert received.data == head + (b"line one\r\nline two\r\nline three\r\n\r\n.dot after LF\r\n")


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b"\r\n.\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b".a\r\n.\r\n..\r\n", b"..a\r\n..\r\n...\r\n.\r\n"),
        (b"a\n.b", b"a\r\n..b\r\n.\r\n"),
        (b"a.\r\n b.", b"a.\r\n b.\r\n.\r\n"),
    ],
)
def test_wire_content(data, wire):
    assert wire_content(data) == wire


@pytest.mark.parametrize(
    ("address", "encoding", "wire"),
    [
        ("kim@example.com", "ascii", b"<kim@example.com>"),
        ("jürgen@xn--mller-kva.de", "utf-8", "<jürgen@xn--mller-kva.de>".encode()),
        ("Example Shop <crm@shop.example.com>", "ascii", b"<crm@shop.example.com>"),
        ('"kim lee"@example.com', "ascii", b'<"kim lee"@example.com>'),
        # aiosmtplib keeps the first mailbox: one RCPT TO, nothing appended to the command
        ("a@example.com> NOTIFY=NEVER", "ascii", b"<a@example.com>"),
    ],
)
def test_envelope_address(address, encoding, wire):
    assert envelope_address(address, encoding) == wire


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("a@example.com\r\nRCPT TO:<b@evil.com>", "control character"),
        ("a@example.com\x00", "control character"),
        ("a@exa\tmple.com", "control character"),
        ("a b@example.com", "not permitted"),
    ],
)
def test_envelope_address_refuses_what_could_end_the_command(address, refusal):
    with pytest.raises(ValueError, match=refusal):
        envelope_address(address, "ascii")
