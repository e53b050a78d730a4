"""What a message needs of the relay's 8BITMIME and SMTPUTF8, decided before it is sent.

A message whose bytes are all ASCII needs nothing and goes out as composed: the usual case
costs one ``bytes.isascii()``. Otherwise:

* **8-bit content** (a German body written as ``Content-Transfer-Encoding: 8bit``): to a relay
  that offers 8BITMIME, ``BODY=8BITMIME`` on MAIL FROM (RFC 6152; without it the relay may take
  the body for 7-bit and mangle or bounce it); to one that does not, the message is re-encoded
  first (:func:`seven_bit`): each 8-bit part becomes quoted-printable or base64, whichever is
  shorter. Composing writes 8-bit because nearly every relay offers 8BITMIME and 8-bit text is
  smaller and cheaper to write, so the re-encoding is paid only on a relay that needs it.
* **Non-ASCII addresses** (a local part like ``jürgen``, in the envelope or written as UTF-8
  in the header, RFC 6532): ``SMTPUTF8`` on MAIL FROM (RFC 6531) when the relay offers it; a
  relay that does not cannot carry the message at all (there is no 7-bit form of such a local
  part), so :func:`submission` refuses it with :class:`~worker.errors.Utf8UnsupportedError`.
  Domains are already in their IDNA (``xn--``) form (:mod:`worker.messages.addresses`) and other
  header text in RFC 2047 encoded words (:mod:`worker.messages.mail`), so they need nothing.

A DKIM signature (:mod:`worker.messages.signature`) covers the body as composed; re-encoding
changes the body, so the old signature is dropped and, given the signer, the 7-bit form
signed again.

Example::

    sent = submission(
        "crm@shop.example.com", "ann@example.com", data, eightbitmime=False, smtputf8=False
    )
    assert sent.data.isascii() and sent.mail_options == ()
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import quoprimime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from worker.errors import Utf8UnsupportedError
from worker.messages.mail import needs_smtputf8

#: RFC 2045 §6.7 and §6.8: encoded lines of at most 76 characters.
ENCODED_LINE_CHARS = 76
#: The email package's string-header policy: ``policy.SMTP``'s header objects parse each
#: Content-Type again on every look-up (a third of the time here). The few Content-* lines it
#: sees are short and written back as read; the other header fields never go through it.
_PARSE_POLICY = compat32.clone(linesep="\r\n", max_line_length=998, mangle_from_=False)
_DKIM_SIGNATURE = b"dkim-signature:"
_CTE_FIELD = b"content-transfer-encoding:"
#: Where one header field ends and the next begins (a line break not followed by a fold).
_FIELD_BREAK = re.compile(rb"\r\n(?![ \t])")


@dataclass(frozen=True, slots=True)
class Submission:
    """A message as it goes to one relay: the MAIL FROM parameters (``BODY=8BITMIME``,
    ``SMTPUTF8``), its content, and ``utf8`` when the envelope addresses are written in UTF-8."""

    mail_options: tuple[str, ...]
    data: bytes
    utf8: bool = False


def submission(
    sender: str,
    recipient: str,
    data: bytes,
    *,
    eightbitmime: bool,
    smtputf8: bool,
    sign: Callable[[bytes], bytes] | None = None,
) -> Submission:
    """``data`` from ``sender`` to ``recipient`` for a relay whose EHLO offered
    ``eightbitmime`` and ``smtputf8`` (see the module docstring); ``sign`` re-signs a message
    that had to be re-encoded. Raises :class:`~worker.errors.Utf8UnsupportedError`."""
    utf8_envelope = needs_smtputf8(sender) or needs_smtputf8(recipient)
    if data.isascii() and not utf8_envelope:
        return Submission((), data)
    head = _head(data)
    utf8 = utf8_envelope or not head.isascii()
    if utf8 and not smtputf8:
        wide = next((a for a in (recipient, sender) if needs_smtputf8(a)), "")
        raise Utf8UnsupportedError(wide)
    if not eightbitmime and not data[len(head) :].isascii():
        data = seven_bit(data, sign=sign)
    options = ("BODY=8BITMIME",) if not data.isascii() and eightbitmime else ()
    return Submission((*options, "SMTPUTF8") if utf8 else options, data, utf8_envelope)


def seven_bit(data: bytes, *, sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """``data`` with every part that carries 8-bit octets re-encoded as quoted-printable or
    base64 (the shorter; lines of :data:`ENCODED_LINE_CHARS`), the headers left as they are: a
    header written in UTF-8 stays so (it needs SMTPUTF8 anyway). A leading ``DKIM-Signature``
    no longer matches the body; it is dropped, and ``sign`` (if given) signs the result."""
    signed = data[: len(_DKIM_SIGNATURE)].lower() == _DKIM_SIGNATURE
    if signed:
        data = _without_first_header(data)
    head = _head(data)
    body = data[len(head) + 4 :]
    fields = _FIELD_BREAK.split(head)
    # Only the Content-* fields go through the email package: the others would be parsed and
    # folded again for nothing (most of the time), and are kept byte for byte instead.
    mime = [field for field in fields if field[:8].lower() == b"content-"]
    message = BytesParser(policy=_PARSE_POLICY).parsebytes(
        b"".join(field + b"\r\n" for field in mime) + b"\r\n" + body
    )
    for part in message.walk():
        _reencode(part)
    new_head, _, new_body = message.as_bytes(policy=_PARSE_POLICY).partition(b"\r\n\r\n")
    # A single-part message's own transfer encoding is in its header: take the new one.
    kept = [field for field in fields if not _is_transfer_encoding(field)]
    kept += [field for field in _FIELD_BREAK.split(new_head) if _is_transfer_encoding(field)]
    out = b"\r\n".join(kept) + b"\r\n\r\n" + new_body
    return sign(out) if signed and sign is not None else out


def _is_transfer_encoding(field: bytes) -> bool:
    return field[: len(_CTE_FIELD)].lower() == _CTE_FIELD


def _reencode(part: Message) -> None:
    """Give one part a 7-bit transfer encoding if its content has 8-bit octets (a multipart
    declared 8-bit is 7-bit once its parts are)."""
    cte = part.get("Content-Transfer-Encoding", "7bit").strip().lower()
    if cte not in ("7bit", "8bit", "binary"):
        return  # quoted-printable or base64 already
    if part.is_multipart():
        if cte != "7bit":
            part.replace_header("Content-Transfer-Encoding", "7bit")
        return
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or raw.isascii():
        return
    # Text is encoded with CRLF line ends (RFC 2045 §6.8 canonical form; quoted-printable
    # writes its own line breaks as such, so both decode to the same lines).
    lines = raw.splitlines()
    canonical = b"\r\n".join(lines) + (b"\r\n" if raw.endswith((b"\n", b"\r")) else b"")
    qp = quoprimime.body_encode(canonical.decode("latin-1"), ENCODED_LINE_CHARS, eol="\r\n")
    b64 = base64.encodebytes(canonical).decode("ascii").replace("\n", "\r\n")
    encoding, body = ("quoted-printable", qp) if len(qp) <= len(b64) else ("base64", b64)
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = encoding
    part.set_payload(body)


def _head(data: bytes) -> bytes:
    """The header section of a message (everything before the first empty line)."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end]


def _without_first_header(data: bytes) -> bytes:
    """``data`` without its first header field and that field's continuation lines."""
    end = data.find(b"\r\n")
    while end >= 0 and data[end + 2 : end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    return data[end + 2 :] if end >= 0 else b""
