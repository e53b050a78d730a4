"""The bytes of a message, written directly: the fast path of :func:`worker.messages.mail.compose`.

Building an ``EmailMessage`` and flattening it parses every header value back into a token tree
and refolds it; for a birthday card that is about 1.8 ms, more than rendering the templates and
sending over SMTP together, and the largest cost of a delivery. Most header values are plain
ASCII that the email package writes unchanged; most of the rest are short names and subjects
with a few non-ASCII words (Jürgen Müller, ¡Feliz cumpleaños!) that it writes as one line with
one encoded word, and longer German or Spanish subjects that it folds into lines of 76 columns
with encoded words split and merged across them (:func:`_folded_unstructured` repeats the steps
of its folder, quirks included). This module writes these kinds itself (with the email
package's own RFC 2047 encoder) and hands anything else (a quoted name, a long non-ASCII display
name, a subject with ``=?`` or unusual whitespace) to the same policy, header by header. The
output is byte for byte what :func:`worker.messages.mail.compose` writes through the email package
(the MIME boundary aside, which is random in both); ``tests/test_wire.py`` checks that over many
kinds of names, subjects and bodies, fixed and random.

Anything unusual (a recipient that needs SMTPUTF8, a boundary that occurs in a body) returns
``None`` and the caller takes the email package path.

The pieces the email package computes slowly for every message are computed here the same way
with fewer steps: the ``Date`` value (:func:`date_value`), the encoded word (:func:`_encoded_word`,
the email package's q/b choice with its own byte map) and the transfer encoding of a body whose
lines fit (:func:`_body`); each is compared with the email package's own function in
``tests/test_wire.py``.
"""

from __future__ import annotations

import base64
import importlib
import logging
import random
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email import contentmanager
from email.headerregistry import Address
from email.policy import EmailPolicy
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

from worker.constants import ENCODED_HEADER_FOLD_COLUMNS

log = logging.getLogger(__name__)

#: RFC 5322 atext words separated by single spaces: a display name written without quotes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_NAME = re.compile(rf"(?:{_ATEXT}(?: {_ATEXT})*)?")
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
#: Printable ASCII words separated by single spaces: written unchanged when short enough.
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
#: A word of a display name that the email package reads as one atom (non-ASCII allowed).
_PHRASE_WORD = re.compile(r"[^\x00-\x20()<>@,;:\\\".\[\]\x7f]+")
_encoded_words = importlib.import_module("email._encoded_words")
#: The email package's RFC 2047 encoder (q or b, whichever is shorter, biased to q).
_encode_word: Any = getattr(_encoded_words, "encode", None)
#: Its q encoding of each byte (``=XX``, ``_`` for a space, the byte itself when safe), read
#: from the email package's own map so that :func:`_encoded_word` writes what it writes.
_q_byte_map: Any = getattr(_encoded_words, "_q_byte_map", None)
_Q_BYTES: tuple[str, ...] | None = (
    tuple(_q_byte_map[byte] for byte in range(256)) if _q_byte_map is not None else None
)
#: The bytes the q encoding writes as one character.
_Q_SHORT = bytes(b for b in range(256) if _Q_BYTES is not None and len(_Q_BYTES[b]) == 1)
#: The chrome of each encoded word we write: ``=?utf-8?q?`` (or ``b``) and ``?=``.
_EW_CHROME = len("=?utf-8?q??=")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: contentmanager's choice of transfer encoding (7bit, 8bit, quoted-printable, base64) for a
#: text part under a policy; used as is so the bodies match the email package's exactly.
_encode_text: Any = getattr(contentmanager, "_encode_text", None)


def date_value(moment: datetime) -> str:
    """``email.utils.format_datetime(moment)``: written directly for an instant in UTC (every
    ``Date`` we send), through the email package for any other zone."""
    if moment.tzinfo is not UTC:
        return format_datetime(moment)
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} "
        f"{moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} +0000"
    )


def _encoded_word(text: str) -> str:
    """``email._encoded_words.encode(text, charset="utf-8")``: the q form unless it is five or
    more characters longer than the b form, with the lengths counted at C speed."""
    if _Q_BYTES is None:
        return str(_encode_word(text, charset="utf-8"))
    data = text.encode("utf-8")
    if _q_wins(_q_length(data), len(data)):
        return f"=?utf-8?q?{''.join(map(_Q_BYTES.__getitem__, data))}?="
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


def _q_length(data: bytes) -> int:
    """Length of the q encoding of ``data``: three characters for each byte not in _Q_SHORT."""
    return len(data) + 2 * len(data.translate(None, _Q_SHORT))


def _b_length(size: int) -> int:
    """Length of the base64 encoding of ``size`` bytes."""
    return (size + 2) // 3 * 4


def _q_wins(q_length: int, size: int) -> bool:
    """The email package's choice: q unless it is five or more characters longer than b."""
    return q_length - _b_length(size) < 5


def _plain(value: str) -> bool:
    # "=?" could be read back as an RFC 2047 encoded word: leave that to the email package.
    return _PLAIN_TEXT.fullmatch(value) is not None and "=?" not in value


def _plain_address(address: Address) -> str | None:
    if not (_DOT_ATOM.fullmatch(address.username) and _DOT_ATOM.fullmatch(address.domain)):
        return None
    name = address.display_name
    if "=?" in name or not _PLAIN_NAME.fullmatch(name):
        return None
    spec = f"{address.username}@{address.domain}"
    return f"{name} <{spec}>" if name else spec


def _encoded_run(text: str, *, phrase: bool) -> str | None:
    """``text`` with the span from its first to its last non-ASCII word as one RFC 2047
    encoded word, as the email package folds a short header (it merges every word between
    two encoded ones into one); ``None`` when the text is not that simple case."""
    words = text.split(" ")
    for word in words:
        if not word or not word.isprintable() or "=?" in word:
            return None
        if phrase and not _PHRASE_WORD.fullmatch(word):
            return None
    wide = [n for n, word in enumerate(words) if not word.isascii()]
    if not wide:
        return None
    first, last = wide[0], wide[-1] + 1
    run = _encoded_word(" ".join(words[first:last]))
    return " ".join([*words[:first], run, *words[last:]])


def _encoded_line(name: str, value: str | Address) -> str | None:
    """The one-line form of a header that needs encoded words, or ``None``."""
    if isinstance(value, Address):
        if not (_DOT_ATOM.fullmatch(value.username) and _DOT_ATOM.fullmatch(value.domain)):
            return None
        phrase = _encoded_run(value.display_name, phrase=True)
        text = phrase and f"{phrase} <{value.username}@{value.domain}>"
    elif len(name) + 2 + len(value) + _EW_CHROME > ENCODED_HEADER_FOLD_COLUMNS:
        # An encoded word is at least as long as its text plus the chrome: it cannot fit.
        return None
    else:
        text = _encoded_run(value, phrase=False)
    line = text and f"{name}: {text}"
    return line if line and len(line) <= ENCODED_HEADER_FOLD_COLUMNS else None


#: An unstructured value as the email package reads it: words and the runs of spaces between.
_SPACES = re.compile("( +)")
#: A word with a non-ASCII character, in a value of printable words separated by spaces.
_WIDE_WORD = re.compile(r"((?<![^ ])[!-~]*+[^\x00-\x7f][^ ]*)")


def _ew_length(q_length: int, size: int) -> int:
    """``len(_encoded_word(text))`` for a text of ``size`` UTF-8 bytes and that q length."""
    return _EW_CHROME + (q_length if _q_wins(q_length, size) else _b_length(size))


def _fitting_prefix(text: str, room: int) -> int:
    """How many characters of ``text`` ``_fold_as_ew`` puts in an encoded word of at most
    ``room`` columns: it takes ``room - 12`` characters and drops one at a time from the end
    until the word fits (here each drop updates the lengths instead of encoding again)."""
    n = min(len(text), room - _EW_CHROME)
    data = text[:n].encode()
    q_length, size = _q_length(data), len(data)
    while _ew_length(q_length, size) > room:
        n -= 1
        char = text[n].encode()
        q_length -= _q_length(char)
        size -= len(char)
    return n


def _steal_trailing_space(lines: list[str]) -> str:
    """``_steal_trailing_WSP_if_exists``: the space a new line takes from the end of the last."""
    if lines[-1].endswith(" "):
        lines[-1] = lines[-1][:-1]
        return " "
    return ""


def _folded_unstructured(name: str, value: str) -> str | None:
    """The lines (CRLF between them) the email package writes for an unstructured header
    (``Subject``) with non-ASCII words under :data:`worker.messages.mail.WIRE_POLICY`: the steps of
    ``_refold_parse_tree`` and ``_fold_as_ew`` at
    :data:`~worker.constants.ENCODED_HEADER_FOLD_COLUMNS`, for a value of printable words
    separated by spaces; ``None`` for anything else.

    The email package reads such a value as words and runs of spaces. ASCII ones are written as
    they are, on a new line (with the space before them) when they do not fit. A non-ASCII word
    becomes an encoded word that fills the line and continues on the next ones; a later
    non-ASCII word on the same line is merged into it, together with everything written since
    (``_fold_as_ew`` decodes the line from ``last_ew`` on and encodes it again with the word).
    """
    if value.isascii() or not value.isprintable() or "=?" in value or value != value.strip(" "):
        # isprintable: the only whitespace left is " " (no tab, NBSP or line break); "=?" would
        # be read as an encoded word; leading or trailing spaces are left to the email package.
        return None
    width = ENCODED_HEADER_FOLD_COLUMNS
    lines = [f"{name}: "]
    # The email package's last_ew: the column of the last line from which a next non-ASCII
    # word merges. It is not always where that line's encoded word starts (see below).
    last_ew: int | None = None
    # The last encoded word written: line, column, the word and the text it encodes.
    written = (-1, -1, "", "")
    # The ASCII words and spaces between non-ASCII words, then a non-ASCII word, and so on.
    for index, piece in enumerate(_WIDE_WORD.split(value)):
        if index % 2 == 0:
            if len(piece) <= width - len(lines[-1]):
                lines[-1] += piece  # what writing them one at a time does when all fit
                continue
            for token in _SPACES.split(piece):
                if len(token) <= width - len(lines[-1]):
                    lines[-1] += token
                    continue
                newline = _steal_trailing_space(lines)
                if len(token) + 1 > width or not (newline or token.startswith(" ")):
                    # Too long for a line of its own (or no space to fold at): the email
                    # package writes it as an encoded word to split it.
                    return None
                lines.append(newline + token)
                last_ew = None
            continue
        text = piece
        if last_ew is not None:
            # _fold_as_ew reads the line from last_ew on back with get_unstructured: our
            # encoded word decodes to its text, and the rest (spaces, ASCII words, or pieces of
            # an encoded word after a stale last_ew) reads as itself if it has no "=?" (else
            # it is left to the email package).
            tail = lines[-1][last_ew:]
            line, column, word, decoded = written
            start = column - last_ew
            if line == len(lines) - 1 and start >= 0 and tail.startswith(word, start):
                spaces, rest = tail[:start], tail[start + len(word) :]
                if spaces.strip(" ") or "=?" in rest:
                    return None
                tail = spaces + decoded + rest
            elif "=?" in tail:
                return None
            text = tail + piece
            lines[-1] = lines[-1][:last_ew]
        if text.startswith(" "):
            # The encoded word read back started with a space (a split fell just before one):
            # _fold_as_ew writes that space unencoded, and last_ew stays before it.
            text = text[1:]
            if len(lines[-1]) == width:
                lines.append(_steal_trailing_space(lines))
            lines[-1] += " "
        new_last_ew = len(lines[-1]) if last_ew is None else last_ew
        while text:
            room = width - len(lines[-1])
            if room <= _EW_CHROME:
                # No room for a character: a new line, and (as in _fold_as_ew) new_last_ew
                # still the column of the previous line, which is how last_ew goes stale.
                lines.append(" ")
                continue
            n = _fitting_prefix(text, room)
            word = _encoded_word(text[:n])
            written = (len(lines) - 1, len(lines[-1]), word, text[:n])
            lines[-1] += word
            text = text[n:]
            if text:
                lines.append(" ")
                new_last_ew = 1
        last_ew = new_last_ew
    return "\r\n".join(lines)


#: Words of the subjects :func:`_folding_agrees` folds both ways: ASCII, accented, emoji,
#: q-encoded punctuation (with a word that fills half a line, see there).
_PROBE_WORDS = ("a", "de", "für", "Größe", "aún", "Reclamación", "(aviso", "1):", "🎉", "x=y")


@lru_cache(maxsize=4)
def _folding_agrees(policy: EmailPolicy) -> bool:
    """Does :func:`_folded_unstructured` write what this Python's email package writes under
    ``policy``? It repeats the folder of Python 3.11, which later releases changed (3.13 folds
    some long subjects differently), so each process checks once, on subjects that reach its
    merges, splits and quirks, and leaves long subjects to the email package if not."""
    rng = random.Random(2047)
    probes = [
        "x" * 50 + " 🎉 y",
        "Sie prüfen schnell Größe beschädigt, für März gewünscht,",
        *(
            " ".join(rng.choices([*_PROBE_WORDS, "x" * 36], k=rng.randint(8, 30)))
            for _ in range(40)
        ),
    ]
    for probe in probes:
        line = _folded_unstructured("Subject", probe)
        reference = policy.fold_binary(*policy.header_store_parse("Subject", probe))
        if line is not None and f"{line}\r\n".encode("ascii") != reference:
            log.warning(
                "this Python's email package folds long subjects differently from 3.11's: "
                "long non-ASCII subjects are written by the email package (slower)"
            )
            return False
    return True


def header_line(policy: EmailPolicy, name: str, value: str | Address) -> bytes:
    """``Name: value`` with CRLF, as ``policy`` writes it in a flattened message; ``policy`` is
    :data:`worker.messages.mail.WIRE_POLICY` (or its UTF-8 clone), whose encoded words are folded at
    :data:`~worker.constants.ENCODED_HEADER_FOLD_COLUMNS`."""
    text = _plain_address(value) if isinstance(value, Address) else value
    # The policy leaves an ASCII line unfolded up to its max_line_length (998, see
    # worker.messages.mail).
    fits = policy.max_line_length is not None and len(name) + 2 + len(text or "") <= (
        policy.max_line_length
    )
    if text is not None and fits and _plain(text):
        return f"{name}: {text}\r\n".encode("ascii")
    # Under a UTF-8 policy (RFC 6532) the email package writes non-ASCII text as it is.
    if _encode_word is not None and not policy.utf8:
        line = _encoded_line(name, value)
        if (
            line is None
            and name == "Subject"
            and isinstance(value, str)
            and _Q_BYTES is not None
            and _folding_agrees(policy)
        ):
            # Too long for one line: fold it here, the email package's slow part.
            line = _folded_unstructured(name, value)
        if line is not None:
            return f"{line}\r\n".encode("ascii")
    return policy.fold_binary(*policy.header_store_parse(name, value))


def _body(policy: EmailPolicy, text: str) -> tuple[str, bytes]:
    """The transfer encoding and the CRLF lines (each ending in CRLF) of a UTF-8 text part, as
    contentmanager's ``_encode_text`` chooses and writes them. Its first choice, taken here
    directly: when every line fits ``max_line_length``, ``7bit`` for ASCII, else ``8bit`` if
    the policy allows it, with the lines as they are. Anything else (a line too long, a 7-bit
    policy) goes through ``_encode_text`` itself (quoted-printable or base64)."""
    data = text.encode("utf-8")
    lines = data.splitlines()
    limit = policy.max_line_length
    ascii_body = data.isascii()
    fits = limit is not None and max(map(len, lines), default=0) <= limit
    if fits and (ascii_body or policy.cte_type == "8bit"):
        return ("7bit" if ascii_body else "8bit"), b"\r\n".join(lines) + b"\r\n"
    cte, payload = _encode_text(text, "utf-8", None, policy)
    body = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else payload
    return cte, b"\r\n".join(body.splitlines()) + b"\r\n"


def _text_part(policy: EmailPolicy, subtype: str, text: str) -> bytes:
    cte, body = _body(policy, text)
    lines = [
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n',
        f"Content-Transfer-Encoding: {cte}\r\n",
        "\r\n",
    ]
    return "".join(lines).encode("ascii") + body


def message_bytes(
    policy: EmailPolicy,
    headers: Iterable[tuple[str, str | Address]],
    *,
    text: str,
    html: str,
    language: str,
) -> bytes | None:
    """A multipart/alternative message (text, then HTML) with ``headers`` first, exactly as
    :func:`worker.messages.mail.compose` builds it with the email package and flattens it under
    ``policy`` (:data:`worker.messages.mail.WIRE_POLICY`: lines up to 998 octets, encoded words
    folded at :data:`~worker.constants.ENCODED_HEADER_FOLD_COLUMNS`); ``MIME-Version`` once, at
    the top.
    ``None`` when the email package must write it."""
    if _encode_text is None or policy.utf8 or policy.linesep != "\r\n":
        return None
    # The email package's boundary: 15 "=", 19 random digits, "=="; it must not occur inside.
    boundary = f"{'=' * 15}{random.randrange(10**19):019d}=="
    if boundary in text or boundary in html:
        return None
    out = [header_line(policy, name, value) for name, value in headers]
    out.append(b"MIME-Version: 1.0\r\n")
    out.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode())
    out.append(header_line(policy, "Content-Language", language))
    marker = f"--{boundary}\r\n".encode()
    out += [b"\r\n", marker, _text_part(policy, "plain", text)]
    out += [b"\r\n", marker, _text_part(policy, "html", html)]
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)
