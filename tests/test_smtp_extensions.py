"""8BITMIME and SMTPUTF8: what a relay receives when it offers them and when it does not.

The decision itself (:func:`worker.channels.smtp_extensions.submission`) is checked on a table; then
real messages go through the SMTP channel into aiosmtpd servers that offer neither extension
and both, and the tests read what those servers received: MAIL FROM's parameters, the bytes,
and what they decode to.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest

from tests.conftest import SmtpSink
from worker.channels import Outgoing, Receipt, SmtpChannel
from worker.channels.smtp_extensions import ENCODED_LINE_CHARS, seven_bit, submission
from worker.errors import Utf8UnsupportedError
from worker.messages.mail import compose
from worker.messages.rendering import RenderedMessage
from worker.messages.unsubscribe import UnsubscribeLinks

SENDER = "crm@shop.example.com"
GERMAN = RenderedMessage(
    "birthday",
    "de",
    "Alles Gute zum Geburtstag, Jürgen! 🎉",
    "Hallo Jürgen,\n\nalles Gute zum Geburtstag wünscht Bäckerei Groß.\n.Punkt am Zeilenanfang\n",
    "<p>Hallo Jürgen,</p>\n<p>alles Gute &amp; Grüße!</p>\n<p>" + "é" * 300 + "</p>\n",
)
ENGLISH = RenderedMessage(
    "birthday", "en", "Happy birthday, Ann!", "Hi Ann,\nhappy birthday.\n", "<p>Hi Ann</p>\n"
)
LINKS = UnsubscribeLinks("https://shop.example.com/unsubscribe/" + "t" * 120, "mailto:u@x.org")


def composed(
    message: RenderedMessage,
    recipient: str,
    name: str = "Jürgen Müller",
    reply_to: str | None = None,
) -> bytes:
    return compose(
        message,
        sender="Bäckerei Groß <crm@shop.example.com>",
        recipient=recipient,
        recipient_name=name,
        message_id="<0123abcd@shop.example.com>",
        date=datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
        reply_to=reply_to,
        unsubscribe=LINKS,
        list_id="<birthday.shop.example.com>",
    )


def outgoing(n: int, message: RenderedMessage, recipient: str) -> Outgoing:
    data = composed(message, recipient)
    return Outgoing(f"k{n}", "email", SENDER, recipient, "<0123abcd@shop.example.com>", data)


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def content(data: bytes) -> tuple[str, str, str, str, str]:
    """What a reader sees: subject, sender, recipient, text and HTML (line ends as LF)."""
    mail = parsed(data)
    text, html = (mail.get_body((kind,)) for kind in ("plain", "html"))
    assert text is not None and html is not None
    return (
        str(mail["Subject"]),
        str(mail["From"]),
        str(mail["To"]),
        text.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n"),
    )


def assert_well_formed(data: bytes) -> None:
    """One MIME-Version, in the top-level header; no line beyond SMTP's 998 octets."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.count(b"\r\nMIME-Version: 1.0\r\n") == 1 and b"MIME-Version" not in body
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# The decision, on a table -------------------------------------------------------------------

GERMAN_DATA = composed(GERMAN, "ann@example.com")
ENGLISH_DATA = composed(ENGLISH, "ann@example.com", name="Ann")
UTF8_DATA = composed(GERMAN, "jürgen@xn--mller-kva.de")
#: An ASCII envelope, but a Reply-To whose local part is not ASCII: the header is UTF-8.
UTF8_REPLY_TO_DATA = composed(ENGLISH, "ann@example.com", "Ann", "Hilfe <hülfe@shop.example.com>")

SUBMISSIONS = [
    # (data, recipient, relay offers 8BITMIME, SMTPUTF8) -> MAIL FROM parameters, sent as is
    (ENGLISH_DATA, "ann@example.com", True, True, (), True),
    (ENGLISH_DATA, "ann@example.com", False, False, (), True),
    (GERMAN_DATA, "ann@example.com", True, False, ("BODY=8BITMIME",), True),
    (GERMAN_DATA, "ann@example.com", True, True, ("BODY=8BITMIME",), True),
    (GERMAN_DATA, "ann@example.com", False, False, (), False),
    (UTF8_DATA, "jürgen@xn--mller-kva.de", True, True, ("BODY=8BITMIME", "SMTPUTF8"), True),
    # RFC 6531 requires 8BITMIME beside SMTPUTF8; a relay without it still gets a 7-bit body.
    (UTF8_DATA, "jürgen@xn--mller-kva.de", False, True, ("SMTPUTF8",), False),
    # An ASCII message to a non-ASCII envelope address: SMTPUTF8 alone.
    (ENGLISH_DATA, "jürgen@xn--mller-kva.de", False, True, ("SMTPUTF8",), True),
    (UTF8_REPLY_TO_DATA, "ann@example.com", True, True, ("BODY=8BITMIME", "SMTPUTF8"), True),
]


@pytest.mark.parametrize(
    ("data", "recipient", "eightbitmime", "smtputf8", "options", "unchanged"), SUBMISSIONS
)
def test_submission_asks_for_what_the_message_needs_and_the_relay_offers(
    data, recipient, eightbitmime, smtputf8, options, unchanged
):
    sent = submission(SENDER, recipient, data, eightbitmime=eightbitmime, smtputf8=smtputf8)
    assert sent.mail_options == options
    assert sent.utf8 == (not recipient.isascii())
    assert (sent.data == data) == unchanged
    if not eightbitmime:
        assert sent.data.partition(b"\r\n\r\n")[2].isascii()
    assert content(sent.data) == content(data)


@pytest.mark.parametrize("eightbitmime", [True, False])
@pytest.mark.parametrize(
    ("sender", "recipient", "data"),
    [
        (SENDER, "jürgen@xn--mller-kva.de", UTF8_DATA),
        ("bäckerei@shop.example.com", "ann@example.com", ENGLISH_DATA),
        # The envelope is ASCII but a header is written in UTF-8 (RFC 6532).
        (SENDER, "ann@example.com", UTF8_DATA),
        (SENDER, "ann@example.com", UTF8_REPLY_TO_DATA),
    ],
)
def test_a_non_ascii_local_part_without_smtputf8_is_refused_with_the_reason(
    sender, recipient, data, eightbitmime
):
    with pytest.raises(Utf8UnsupportedError, match="does not offer SMTPUTF8") as refused:
        submission(sender, recipient, data, eightbitmime=eightbitmime, smtputf8=False)
    wide = [address for address in (recipient, sender) if not address.isascii()]
    assert refused.value.address == (wide[0] if wide else "")
    assert refused.value.code is None  # the relay did not refuse it: nothing was sent


def test_a_non_ascii_local_part_in_a_header_is_written_in_utf8_never_as_an_encoded_word():
    head = UTF8_REPLY_TO_DATA.partition(b"\r\n\r\n")[0]
    assert "\r\nReply-To: Hilfe <hülfe@shop.example.com>\r\n".encode() in head
    assert b"<=?" not in head  # RFC 2047 §5: no encoded word inside an addr-spec


def test_seven_bit_keeps_the_headers_and_encodes_each_eight_bit_part():
    out = seven_bit(GERMAN_DATA)
    assert out.isascii()
    assert out.partition(b"\r\n\r\n")[0] == GERMAN_DATA.partition(b"\r\n\r\n")[0]
    assert content(out) == content(GERMAN_DATA)
    assert_well_formed(out)
    parts = list(parsed(out).iter_parts())
    # Mostly ASCII text reads best as quoted-printable; a run of é is shorter in base64.
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64"]
    body = out.partition(b"\r\n\r\n")[2]
    reencoded = [line for line in body.split(b"\r\n") if not line.startswith(b"--")]
    assert max(map(len, reencoded)) <= ENCODED_LINE_CHARS


def test_seven_bit_leaves_ascii_parts_alone():
    assert content(seven_bit(ENGLISH_DATA)) == content(ENGLISH_DATA)
    head = ENGLISH_DATA.partition(b"\r\n\r\n")[0]
    assert seven_bit(ENGLISH_DATA).partition(b"\r\n\r\n")[0] == head


def test_seven_bit_rewrites_a_single_part_messages_own_transfer_encoding():
    data = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
    )
    out = seven_bit(data)
    assert out.isascii() and out.count(b"Content-Transfer-Encoding:") == 1
    assert out.startswith(b"Subject: x\r\nMIME-Version: 1.0\r\n")
    assert parsed(out).get_content() == "Grüße aus Köln\r\n"


def test_seven_bit_drops_a_signature_the_new_body_would_break_and_signs_again():
    signed = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=abc\r\n" + GERMAN_DATA
    unsigned = seven_bit(signed)
    assert not unsigned.startswith(b"DKIM-Signature") and content(unsigned) == content(signed)
    resigned = seven_bit(signed, sign=lambda data: b"DKIM-Signature: new\r\n" + data)
    assert resigned == b"DKIM-Signature: new\r\n" + unsigned


# Through the SMTP channel into real servers -------------------------------------------------


@pytest.fixture
def channel_for(make_settings: Any) -> Iterator[Any]:
    channels: list[SmtpChannel] = []

    def build(sink: SmtpSink) -> SmtpChannel:
        settings = make_settings(
            CRM_SMTP_HOST=sink.host,
            CRM_SMTP_PORT=str(sink.port),
            CRM_SMTP_SECURITY="none",
            # One connection: the relay sees the batch in order (the default is several).
            CRM_SMTP_CONNECTIONS="1",
        )
        channel = SmtpChannel(settings)
        channels.append(channel)
        return channel

    yield build
    for channel in channels:
        channel.close()


def send_batch(channel: SmtpChannel, messages: list[Outgoing]) -> dict[str, Receipt | Exception]:
    outcomes: dict[str, Receipt | Exception] = {}
    channel.send_each(messages, lambda message, outcome: outcomes.update({message.key: outcome}))
    return outcomes


def test_a_relay_without_8bitmime_or_smtputf8_gets_seven_bit_mail(
    seven_bit_smtp_server, channel_for
):
    sink = seven_bit_smtp_server
    batch = [
        outgoing(1, GERMAN, "ann@example.com"),
        outgoing(2, GERMAN, "jürgen@xn--mller-kva.de"),  # needs SMTPUTF8: refused alone
        outgoing(3, ENGLISH, "bob@example.com"),
    ]
    outcomes = send_batch(channel_for(sink), batch)
    assert isinstance(outcomes["k1"], Receipt) and isinstance(outcomes["k3"], Receipt)
    refused = outcomes["k2"]
    assert isinstance(refused, Utf8UnsupportedError)
    assert refused.address == "jürgen@xn--mller-kva.de" and "SMTPUTF8" in str(refused)
    assert sink.rcpt_attempts.keys() == {"ann@example.com", "bob@example.com"}
    german, english = sink.received
    for received, sent in ((german, batch[0]), (english, batch[2])):
        assert received.mail_options == []  # no BODY=8BITMIME, no SMTPUTF8
        assert received.sender == SENDER and received.recipients == [sent.recipient]
        assert received.data.isascii()
        assert content(received.data) == content(sent.data)
        assert_well_formed(received.data)
    assert german.data != batch[0].data  # re-encoded on the way
    assert english.data == batch[2].data  # 7-bit already: as composed


def test_a_relay_with_8bitmime_and_smtputf8_gets_the_message_as_composed(
    utf8_smtp_server, channel_for
):
    sink = utf8_smtp_server
    batch = [
        outgoing(1, GERMAN, "ann@example.com"),
        outgoing(2, GERMAN, "jürgen@xn--mller-kva.de"),
        outgoing(3, ENGLISH, "bob@example.com"),
    ]
    outcomes = send_batch(channel_for(sink), batch)
    assert all(isinstance(outcome, Receipt) for outcome in outcomes.values()), outcomes
    # With several connections the relay receives them in any order: match them by recipient.
    by_recipient = {received.recipients[0]: received for received in sink.received}
    german, utf8, english = (by_recipient[sent.recipient] for sent in batch)
    assert german.mail_options == ["BODY=8BITMIME"]
    assert utf8.mail_options == ["BODY=8BITMIME", "SMTPUTF8"]
    assert english.mail_options == []  # nothing 8-bit: no parameter
    assert len(sink.received) == len(batch)
    for received, sent in zip((german, utf8, english), batch, strict=True):
        assert received.recipients == [sent.recipient]
        assert received.data == sent.data  # 8-bit as composed, not re-encoded
        assert content(received.data) == content(sent.data)
        assert_well_formed(received.data)
    assert "To: Jürgen Müller <jürgen@xn--mller-kva.de>\r\n".encode() in utf8.data
