"""The fast message writer produces exactly the bytes the email package produces."""

from __future__ import annotations

import importlib
import itertools
import random
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from email import contentmanager
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import pytest

from worker.messages import mail, wire
from worker.messages.rendering import RenderedMessage, clean_subject
from worker.messages.unsubscribe import UnsubscribeLinks

NAMES = [
    "",
    "Ann Smith",
    "Jürgen Müller",
    "Smith, John <x@evil.com>\r\nBcc: y@evil.com",
    'Ann "The Boss" Smith',
    "J. R. R. Tolkien",
    "=?utf-8?q?J=C3=BCrgen?=",
    "O'Brien-Smith",
    "🎂 Party",
    "x" * 2000,
]
SUBJECTS = [
    "Happy birthday",
    "Alles Gute, Jürgen!",
    "Tom & Jerry <3",
    "🎉 " * 40,
    "=?utf-8?q?not?= encoded",
    "a" * 199,
    "Reclamación C124 aún abierta (aviso 1): El pedido llegó dañado y falta una pieza",
]
BODIES = [
    ("Hi Ann,\nhappy birthday.\n", "<p>Hi</p>"),
    ("Hallo Jürgen,\r\nalles Gute!\n\n", "<p>Grüße &amp; mehr</p>\n"),
    ("", ""),
    ("long " * 400, "<p>" + "ü" * 1500 + "</p>"),
    ("lone\rcarriage", "x\n\n\n"),
]
SENDERS = [("CRM <crm@example.com>", None), ("Bäckerei Groß <shop@example.com>", "Help <h@x.org>")]
RECIPIENTS = ["customer1@example.com", "first.last+tag@xn--mller-kva.de"]
BOUNDARY = re.compile(rb"={15}\d+==")


def _both(**kwargs: object) -> tuple[bytes, bytes]:
    fast = mail.compose(**kwargs)  # type: ignore[arg-type]
    original = mail.message_bytes
    try:
        mail.message_bytes = lambda *a, **k: None  # type: ignore[assignment]
        reference = mail.compose(**kwargs)  # type: ignore[arg-type]
    finally:
        mail.message_bytes = original
    return BOUNDARY.sub(b"B", fast), BOUNDARY.sub(b"B", reference)


@pytest.mark.parametrize(
    ("name", "subject", "body"), list(itertools.product(NAMES, SUBJECTS, BODIES))
)
def test_same_bytes_as_the_email_package(name: str, subject: str, body: tuple[str, str]) -> None:
    rendered = RenderedMessage("t", "de-AT", clean_subject(subject), body[0], body[1])
    links = UnsubscribeLinks("https://example.com/unsubscribe/" + "t" * 120, "mailto:u@x.org")
    for (sender, reply_to), recipient in itertools.product(SENDERS, RECIPIENTS):
        fast, reference = _both(
            message=rendered,
            sender=sender,
            recipient=recipient,
            recipient_name=name,
            message_id="<0123abcd@example.com>",
            date=datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
            reply_to=reply_to,
            unsubscribe=links if name else None,
            list_id="<birthday-greeting.example.com>" if name else None,
        )
        assert fast == reference


#: Anything that may appear in a name or subject; and mostly letters, so that many values
#: take the encoded-word path rather than the email package.
ALPHABETS = ["ab XY1-'.,!()\"<>;:@ üéñßÖ¡—🎂\u200d", "abcXYZ üéñßÖ¡—🎂-'!,"]


@pytest.mark.parametrize("seed", range(10))
def test_random_names_and_subjects_give_the_same_header_lines(seed: int) -> None:
    rng = random.Random(seed)
    policy = mail.WIRE_POLICY
    for _ in range(200):
        alphabet = ALPHABETS[seed % 2]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50)))
        for name, value in (
            ("To", mail.mailbox(text, "someone@example.com")),
            ("Subject", clean_subject(text) or "x"),
        ):
            reference = policy.fold_binary(*policy.header_store_parse(name, value))
            assert wire.header_line(policy, name, value) == reference, (name, text)


#: Words of long subjects: ASCII, accented, emoji, CJK (base64 encoded words), digits and
#: punctuation (the q encoding writes "=", "?", "_", "," and more as =XX).
SUBJECT_WORDS = [
    "a", "de", "und", "Ihr", "C124", "2026", "(aviso", "1):", "—", "¿Qué?", "día,", "x=y", "a?",
    "50%", "_", "<3", "für", "über", "Größe", "Reclamación", "aún", "dañado,", "ñandú", "é_è",
    "🎉", "🎂🎉", "日本語", "ü" * 30,
]  # fmt: skip
#: Now and then a word that fills a line or more; the ASCII ones from 75 characters on do not
#: fit on a line of their own, and the email package encodes them to split them.
LONG_WORDS = ["x" * 40, "y" * 74, "z" * 75, "w" * 90, "ß" * 80]


def _long_subject(rng: random.Random) -> str:
    words, length = [], rng.randint(40, 300)
    while sum(map(len, words)) < length:
        words.append(rng.choice(LONG_WORDS if rng.random() < 0.03 else SUBJECT_WORDS))
        words.append(rng.choice([" "] * 5 + ["  "]))
    return "".join(words[:-1])


#: Whether this Python's email package folds long subjects as wire._folded_unstructured does.
FOLD_TRUSTED = wire._folding_agrees(mail.WIRE_POLICY)


def _header_lines(
    monkeypatch: pytest.MonkeyPatch, values: list[str]
) -> list[tuple[str, bytes, bytes, bool]]:
    """Each value, the email package's Subject line, ours, and whether ours called the email
    package (observed on the policy's fold_binary, through which the fallback goes)."""
    policy = mail.WIRE_POLICY
    references = [policy.fold_binary(*policy.header_store_parse("Subject", v)) for v in values]
    wire._folding_agrees(policy)  # its once-per-process check calls fold_binary: not counted
    calls: list[str] = []
    fold_binary = mail._WirePolicy.fold_binary

    def counted(self: mail._WirePolicy, name: str, value: str) -> bytes:
        calls.append(name)
        return fold_binary(self, name, value)

    results = []
    with monkeypatch.context() as patch:
        patch.setattr(mail._WirePolicy, "fold_binary", counted)
        for value, reference in zip(values, references, strict=True):
            before = len(calls)
            line = wire.header_line(policy, "Subject", value)
            results.append((value, reference, line, len(calls) > before))
    return results


@pytest.mark.parametrize("seed", range(8))
def test_long_subjects_are_folded_as_the_email_package_folds_them(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    values = [_long_subject(rng) for _ in range(250)]
    results = _header_lines(monkeypatch, values)
    for value, reference, line, _ in results:
        assert line == reference, value
    # Most of them (about 85 %) are folded here: several lines, no call to the email package.
    # The rest fit on one line, have an ASCII word too long for a line, or a stale last_ew
    # over an encoded word (see wire._folded_unstructured).
    folded = [value for value, _, line, fallback in results if b"\r\n " in line and not fallback]
    assert len(folded) >= 0.75 * len(values) or not FOLD_TRUSTED


def test_long_german_and_spanish_subjects_do_not_call_the_email_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(3)
    complaints = [
        "El pedido llegó dañado y falta una pieza",
        "Factura de marzo duplicada, por favor revísenla",
        "No recibí el reembolso después de la devolución",
        "Lieferung beschädigt, Rücksendung gewünscht",
        "Rechnung für März doppelt gebucht, bitte prüfen",
        "Größe passt nicht, Umtausch gegen eine größere möglich?",
    ]
    values = []
    for complaint in complaints:
        for _ in range(10):
            number, notice = rng.randrange(1, 10 ** rng.randint(1, 7)), rng.randint(1, 9)
            values.append(f"Reclamación C{number} aún abierta (aviso {notice}): {complaint}")
            values.append(f"Wir kümmern uns weiter um Ihr Anliegen C{number}: {complaint}")
    for value, reference, line, fallback in _header_lines(monkeypatch, values):
        assert line == reference, value
        assert not fallback or not FOLD_TRUSTED, value


@pytest.mark.parametrize(
    "subject",
    [
        # No room for the 🎉 after the x's: an empty encoded word, then a new line.
        "x" * 50 + " 🎉 y",
        # The ü needs a new line, where last_ew keeps the column of the previous line: the
        # encoded é takes with it what follows that column ("kkkkk").
        "aaaaaaaaaa bbbbbbbbbb cccccccccc dddddddddd eeeeeeeeee ffff ü gggggggggg hhhhhhhhhh "
        "iiiiiiiiii jjjjjjjjjj kkkkkkkkkk é",
        # The first encoded word is split just before " für": when "März" merges with the
        # second line's part, its leading space is written unencoded (two spaces open the
        # line), and last_ew stays before that space when "gewünscht," merges.
        "Sie prüfen schnell Größe beschädigt, für März gewünscht,",
    ],
)
def test_the_email_packages_folding_quirks_are_reproduced(
    subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(_, reference, line, fallback)] = _header_lines(monkeypatch, [subject])
    assert line == reference
    assert not fallback or not FOLD_TRUSTED


def test_the_fold_is_trusted_on_the_python_it_repeats() -> None:
    """On Python 3.11 (production's, see docker-compose.yml) long subjects take the fast
    fold, so the tests above check it; elsewhere the email package may write them."""
    if sys.version_info[:2] == (3, 11):
        assert FOLD_TRUSTED


def test_a_fold_that_disagrees_with_the_email_package_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a Python whose email package folds differently: the once-per-process check
    finds out, and long subjects are written by the email package."""
    policy = mail.WIRE_POLICY
    subject = "Wir kümmern uns weiter um Ihr Anliegen C123: Rechnung für März doppelt gebucht"
    folded = wire._folded_unstructured

    def different(name: str, value: str) -> str | None:
        line = folded(name, value)
        return line and line.replace("\r\n ", "\r\n  ", 1)

    monkeypatch.setattr(wire, "_folded_unstructured", different)
    wire._folding_agrees.cache_clear()
    try:
        assert not wire._folding_agrees(policy)
        reference = policy.fold_binary(*policy.header_store_parse("Subject", subject))
        assert wire.header_line(policy, "Subject", subject) == reference
    finally:
        monkeypatch.undo()
        wire._folding_agrees.cache_clear()


def test_a_utf8_policy_writes_non_ascii_header_lines_as_the_email_package_does() -> None:
    policy = mail.WIRE_POLICY_UTF8
    for name, value in (
        ("Subject", "Alles Gute, Jürgen!"),
        ("Subject", "Reclamación C124 aún abierta (aviso 1): El pedido llegó dañado"),
        ("To", mail.mailbox("Jürgen Müller", "j@example.com")),
    ):
        reference = policy.fold_binary(*policy.header_store_parse(name, value))
        assert wire.header_line(policy, name, value) == reference, value


def test_date_value_is_format_datetime() -> None:
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-11, minutes=-30))]
    zones += [ZoneInfo("Europe/Berlin"), ZoneInfo("Pacific/Auckland"), None]
    for _ in range(3_000):
        seconds = rng.randrange(-2_000_000_000, 8_000_000_000)
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=17)
        for zone in zones:
            value = moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone)
            assert wire.date_value(value) == format_datetime(value), value


def test_encoded_words_are_the_email_packages() -> None:
    encode = importlib.import_module("email._encoded_words").encode
    rng = random.Random(11)
    alphabet = "aZ09 _-!*+/=?.,()<>@\"'\\ üéñßÖ¡—🎂\u200d\x00\x7f\xa0"
    samples = ["", " ", "ü", "üü", "=?", "a" * 80, "ü" * 80, "🎂" * 30]
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(5_000)
    ]
    for text in samples:
        assert wire._encoded_word(text) == encode(text, charset="utf-8"), text


def test_text_bodies_are_encoded_as_contentmanager_encodes_them() -> None:
    encode_text = contentmanager._encode_text  # type: ignore[attr-defined]
    rng = random.Random(13)
    pieces = ["a", "Z", " ", "ü", "🎂", "\n", "\r\n", "\r", "\x0b", "\x1c", "\u2028", "=", "."]
    samples = ["", "\n", "x" * 998, "x" * 999, "ü" * 499, "ü" * 500, "a\n" * 20 + "ü" * 600]
    for _ in range(2_000):
        samples.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))))
        samples.append(rng.choice(["x", "ü"]) * rng.randint(990, 1010))
    seven_bit = mail.WIRE_POLICY.clone(cte_type="7bit")
    for policy in (mail.WIRE_POLICY, seven_bit):
        for text in samples:
            cte, payload = encode_text(text, "utf-8", None, policy)
            body = payload.encode("ascii", "surrogateescape")
            expected = (cte, b"\r\n".join(body.splitlines()) + b"\r\n")
            assert wire._body(policy, text) == expected, text


def test_control_characters_in_names_become_spaces() -> None:
    for code in [*range(32), 127, 128, 0x85, 0x2028]:
        name = f"Ann{chr(code)}Smith"
        expected = " ".join("".join(" " if ord(c) < 32 or c == "\x7f" else c for c in name).split())
        assert mail.mailbox(name, "a@example.com").display_name == expected


@pytest.mark.parametrize("recipient", ["customer1@example.com", "jürgen@xn--mller-kva.de"])
def test_mime_version_is_written_once_at_the_top(recipient: str) -> None:
    rendered = RenderedMessage("t", "de", "Alles Gute", "Hallo Jürgen,\n", "<p>Grüße</p>")
    for data in _both(
        message=rendered,
        sender="CRM <crm@example.com>",
        recipient=recipient,
        recipient_name="Jürgen",
        message_id="<0123abcd@example.com>",
        date=datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
    ):
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"\r\nMIME-Version: 1.0\r\n" in head
        assert b"MIME-Version" not in body


@pytest.mark.parametrize(
    ("sender", "reply_to", "line"),
    [
        ("Shop <bäcker@shop.example.com>", None, "From: Shop <bäcker@shop.example.com>"),
        ("Shop <crm@shop.example.com>", "Hilfe <hülfe@x.org>", "Reply-To: Hilfe <hülfe@x.org>"),
    ],
)
def test_a_non_ascii_local_part_anywhere_makes_the_header_utf8(sender, reply_to, line) -> None:
    # RFC 2047 §5: an encoded word is never part of an addr-spec; such an address is UTF-8
    # (RFC 6532) and the message needs SMTPUTF8, wherever the address stands.
    data = mail.compose(
        RenderedMessage("t", "en", "Hi", "Hi\n", "<p>Hi</p>"),
        sender=sender,
        recipient="ann@example.com",
        recipient_name="Ann",
        message_id="<0123abcd@example.com>",
        date=datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
        reply_to=reply_to,
    )
    head = data.partition(b"\r\n\r\n")[0]
    assert f"\r\n{line}\r\n".encode() in b"\r\n" + head + b"\r\n"
    assert b"<=?" not in head and b"=?" not in head
