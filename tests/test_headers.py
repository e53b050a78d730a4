"""What a real SMTP server receives: headers, addresses and language, byte for byte.

Each test writes a small CRM (customers whose birthday is today at 09:00 UTC), runs one pass
through scheduler, Redis queue and worker into an aiosmtpd server, and reads the raw bytes.
"""

from __future__ import annotations

import csv
import re
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import SmtpSink, free_port
from worker.constants import MAX_SUBJECT_CHARS
from worker.localtime import parse_instant
from worker.messages.unsubscribe import OptOut, read_token
from worker.planning.plan import PlannedDelivery, plan

NOW = parse_instant("2026-03-14T10:00:00Z")
COLUMNS = ["id", "email", "first_name", "last_name", "birthday", "locale", "timezone"]
INJECTED_NAME = "Smith, John <x@evil.com>\r\nBcc: y@evil.com"
SECRET = "correct horse battery staple"
UTC_ZONE = ZoneInfo("UTC")


def write_crm(folder: Path, customers: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "customers.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, [*COLUMNS, "email_opt_in"])
        writer.writeheader()
        for row in customers:
            writer.writerow(
                {"birthday": "1990-03-14", "timezone": "UTC", "email_opt_in": "true"} | row
            )
    for name, header in (
        ("purchases.csv", "id,customer_id,product,purchased_at,delivered_at\n"),
        ("complaints.csv", "id,customer_id,subject,opened_at,resolved_at\n"),
    ):
        (folder / name).write_text(header, encoding="utf-8")
    return folder


@pytest.fixture
def deliver(make_runtime, make_settings, smtp_server, tmp_path):
    """Run one pass for ``customers`` (plus settings) and return what the server received."""

    def run(customers: list[dict[str, str]], **settings: str):
        crm = write_crm(tmp_path / "crm", customers)
        runtime = make_runtime(
            make_settings(
                CRM_SOURCE=str(crm),
                CRM_SMTP_HOST=smtp_server.host,
                CRM_SMTP_PORT=str(smtp_server.port),
                CRM_SMTP_SECURITY="none",
                CRM_UNSUBSCRIBE_SECRET=SECRET,
                **settings,
            )
        )
        run.runtime = runtime  # type: ignore[attr-defined]
        summary = runtime.run_once(NOW)
        return summary, smtp_server.received

    return run


def header_lines(data: bytes) -> list[bytes]:
    """The raw header lines (continuation lines joined), as they crossed the wire."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return re.split(rb"\r\n(?![ \t])", head)


def raw_header(data: bytes, name: str) -> list[bytes]:
    prefix = name.lower().encode() + b":"
    return [line for line in header_lines(data) if line.lower().startswith(prefix)]


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def test_every_mail_has_each_header_exactly_once_and_unfolded_unsubscribe(deliver):
    summary, received = deliver(
        [{"id": "7", "email": "ann@example.com", "first_name": "Ann", "locale": "en"}],
        CRM_REPLY_TO="Sales Team <sales@shop.example.com>",
        CRM_UNSUBSCRIBE_URL="https://links.shop.example.com/u",
    )
    assert summary.states["sent"] == 1
    (mail,) = received
    for name in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "Reply-To",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
    ):
        assert len(raw_header(mail.data, name)) == 1, name
    # RFC 2045: MIME-Version belongs to the message, not to its parts.
    assert mail.data.count(b"MIME-Version:") == len(raw_header(mail.data, "MIME-Version")) == 1
    assert raw_header(mail.data, "List-Id") == [b"List-Id: <birthday-greeting.shop.example.com>"]
    assert raw_header(mail.data, "From") == [b"From: Example Shop <crm@shop.example.com>"]
    assert raw_header(mail.data, "Reply-To") == [b"Reply-To: Sales Team <sales@shop.example.com>"]
    assert raw_header(mail.data, "Auto-Submitted") == [b"Auto-Submitted: auto-generated"]
    assert raw_header(mail.data, "List-Unsubscribe-Post") == [
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    ]
    assert re.fullmatch(
        rb"Message-ID: <[0-9a-f]{32}@shop\.example\.com>", *raw_header(mail.data, "Message-ID")
    )

    (unsubscribe,) = raw_header(mail.data, "List-Unsubscribe")
    # One physical line (longer than 78 columns), no RFC 2047 encoded word.
    assert b"\r\n" not in unsubscribe and len(unsubscribe) > 78
    assert b"=?" not in unsubscribe
    match = re.fullmatch(
        rb"List-Unsubscribe: <https://links\.shop\.example\.com/u/([\w.-]+)>, "
        rb"<mailto:unsubscribe@shop\.example\.com\?subject=unsubscribe%20([\w.-]+)>",
        unsubscribe,
    )
    assert match and match[1] == match[2]
    request = read_token([SECRET.encode()], match[1].decode())
    assert request == OptOut("marketing", address="ann@example.com", locale="en")
    # The same link is in the footer of both parts.
    text, html = (part.get_content() for part in parsed(mail.data).iter_parts())
    assert match[1].decode() in text and match[1].decode() in html


def test_message_id_is_derived_from_the_key_and_stable_across_attempts(deliver):
    customers = [{"id": "8", "email": "bo@example.com", "first_name": "Bo", "locale": "en"}]
    _, received = deliver(customers)
    runtime = deliver.runtime
    (item,) = [
        p
        for p in plan(
            runtime.catalog,
            runtime.source,
            NOW,
            default_zone=UTC_ZONE,
            company=runtime.settings.company,
        )
        if isinstance(p, PlannedDelivery)
    ]
    # A later attempt (retry, or a duplicate through a crash window) builds the same Message-ID.
    _, later = runtime.deliverer.build(item, NOW + timedelta(hours=3))
    assert parsed(later.data)["Message-ID"] == parsed(received[0].data)["Message-ID"]
    assert parsed(later.data)["Date"] != parsed(received[0].data)["Date"]


def test_injected_display_name_yields_one_recipient_and_no_header(deliver):
    summary, received = deliver(
        [{"id": "9", "email": "john@example.com", "first_name": INJECTED_NAME, "locale": "en"}]
    )
    assert summary.states["sent"] == 1
    (mail,) = received
    assert mail.recipients == ["john@example.com"]
    assert not raw_header(mail.data, "Bcc")
    (to,) = raw_header(mail.data, "To")
    message = parsed(mail.data)
    assert [a.addr_spec for a in message["To"].addresses] == ["john@example.com"]
    assert message["To"].addresses[0].display_name.startswith("Smith, John <x@evil.com> Bcc")
    assert b"\r\n" not in to
    # In the subject: one line, the name literal (no injected header either).
    assert message["Subject"] == "Happy birthday, Smith, John <x@evil.com> Bcc: y@evil.com!"


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("a@x.com\r\nBcc: b@evil.com", "exactly one address"),
        ("a@x.com, b@evil.com", "exactly one address"),
        ("a@x.com\0", "exactly one address"),
        ("not an address", "@"),
    ],
)
def test_unusable_addresses_are_refused_before_smtp(deliver, email, reason):
    summary, received = deliver(
        [
            {"id": "10", "email": email, "first_name": "Eve", "locale": "en"},
            {"id": "11", "email": "ok@example.com", "first_name": "Ok", "locale": "en"},
        ]
    )
    assert [r.recipients for r in received] == [["ok@example.com"]]
    runtime = deliver.runtime
    skips = [
        p
        for p in plan(
            runtime.catalog,
            runtime.source,
            NOW,
            default_zone=UTC_ZONE,
            company=runtime.settings.company,
        )
        if not isinstance(p, PlannedDelivery)
    ]
    assert [s.record_id for s in skips] == ["10"]
    assert reason in skips[0].reason
    assert summary.report.skipped_total == 1


def test_international_names_and_domains(deliver):
    long_name = "Ñ" * 300
    summary, received = deliver(
        [
            {
                "id": "20",
                "email": "jose@müller.de",
                "first_name": "José",
                "last_name": "Peña Muñoz",
            },
            {"id": "21", "email": "fan@example.com", "first_name": "🎉 Party, Fan"},
            {"id": "22", "email": "long@example.com", "first_name": long_name},
        ]
    )
    assert summary.states["sent"] == 3
    by_rcpt = {r.recipients[0]: r for r in received}
    assert set(by_rcpt) == {"jose@xn--mller-kva.de", "fan@example.com", "long@example.com"}
    for rcpt, mail in by_rcpt.items():
        # Every non-ASCII header is encoded, the domain is IDNA.
        assert mail.data.split(b"\r\n\r\n", 1)[0].isascii()
        message = parsed(mail.data)
        assert [a.addr_spec for a in message["To"].addresses] == [rcpt]
        # RFC 2047: no encoded word longer than 75 characters, however long the name.
        words = re.findall(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=", mail.data.split(b"\r\n\r\n")[0])
        assert words and max(len(w) for w in words) <= 75
    names = {rcpt: parsed(m.data)["To"].addresses[0].display_name for rcpt, m in by_rcpt.items()}
    assert names["jose@xn--mller-kva.de"] == "José Peña Muñoz"
    assert names["fan@example.com"] == "🎉 Party, Fan"
    # The long name is several encoded words; Python 3.11's address parser keeps the folding
    # space between them, which RFC 2047 §6.2 says to ignore (CPython gh-128110).
    assert "".join(names["long@example.com"].split()) == long_name


def test_german_customer_gets_german_subject_and_body(deliver):
    summary, received = deliver(
        [
            {"id": "30", "email": "j@example.de", "first_name": "Jürgen", "locale": "de-AT"},
            {"id": "31", "email": "k@example.com", "first_name": "", "locale": ""},
        ]
    )
    assert summary.states["sent"] == 2
    by_rcpt = {r.recipients[0]: parsed(r.data) for r in received}
    german = by_rcpt["j@example.de"]
    assert german["Subject"] == "Alles Gute zum Geburtstag, Jürgen!"
    assert german["Content-Language"] == "de"
    text, html = (part.get_content() for part in german.iter_parts())
    assert text.startswith("Hallo Jürgen,") and "Abmelden: https://" in text
    assert 'lang="de"' in html and ">Abmelden</a>" in html
    nameless = by_rcpt["k@example.com"]
    assert nameless["Subject"] == "Happy birthday!"
    assert "None" not in nameless.get_body(("plain",)).get_content()


def test_subject_keeps_ampersand_and_angle_brackets_literal(deliver):
    _, received = deliver(
        [{"id": "40", "email": "amp@example.com", "first_name": "Tom & <Jerry>", "locale": "en"}]
    )
    message = parsed(received[0].data)
    assert message["Subject"] == "Happy birthday, Tom & <Jerry>!"
    html = message.get_body(("html",)).get_content()
    assert "Tom &amp; &lt;Jerry&gt;" in html


@pytest.mark.parametrize("smtputf8", [True, False])
def test_non_ascii_local_part_needs_smtputf8(make_runtime, make_settings, tmp_path, smtputf8):
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        crm = write_crm(
            tmp_path / "crm",
            [{"id": "50", "email": "jürgen@müller.de", "first_name": "Jürgen", "locale": "de"}],
        )
        settings = make_settings(
            CRM_SOURCE=str(crm),
            CRM_SMTP_HOST=sink.host,
            CRM_SMTP_PORT=str(sink.port),
            CRM_SMTP_SECURITY="none",
        )
        runtime = make_runtime(settings)
        summary = runtime.run_once(NOW)
    finally:
        controller.stop()
    if smtputf8:
        assert summary.states["sent"] == 1
        (mail,) = sink.received
        assert mail.recipients == ["jürgen@xn--mller-kva.de"]
        assert "To: Jürgen <jürgen@xn--mller-kva.de>\r\n".encode() in mail.data
    else:
        assert summary.states["failed"] == 1 and sink.received == []
        (key,) = summary.report.queued
        assert "SMTPUTF8" in runtime.ledger.get(key)["reason"]


def test_a_2000_character_name_gives_a_capped_subject_and_no_overlong_line(deliver):
    summary, received = deliver(
        [{"id": "60", "email": "x@example.com", "first_name": "A" * 2000 + "\nBcc: y@evil.com"}]
    )
    assert summary.states["sent"] == 1
    data = received[0].data
    assert max(len(line) for line in data.split(b"\r\n")) <= 998  # SMTP's hard limit
    assert not raw_header(data, "Bcc")
    subject = parsed(data)["Subject"]
    assert "\n" not in subject and len(subject) == MAX_SUBJECT_CHARS
    assert subject.startswith("Happy birthday, AAAA") and subject.endswith("…")
    display_name = parsed(data)["To"].addresses[0].display_name
    assert "".join(display_name.split()).startswith("A" * 200)


def test_sender_display_name_is_configurable_and_encoded(deliver):
    _, received = deliver(
        [{"id": "70", "email": "f@example.com", "first_name": "Fa", "locale": "en"}],
        CRM_MAIL_FROM='"Müller & Söhne, Berlin" <crm@shop.example.com>',
    )
    (mail,) = received
    assert mail.sender == "crm@shop.example.com"
    (raw_from,) = raw_header(mail.data, "From")
    assert raw_from.isascii() and raw_from.endswith(b" <crm@shop.example.com>")
    (sender,) = parsed(mail.data)["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Müller & Söhne, Berlin",
        "crm@shop.example.com",
    )
