"""An SMTP session's mail transactions over a connection that aiosmtplib opened.

aiosmtplib connects, does TLS or STARTTLS with its certificate checks, says EHLO and logs in;
then :meth:`SmtpSession.take_over` moves the connection's transport to this protocol, which
sends the transactions. The reason is CPU: aiosmtplib reads one reply per command (its protocol
drops whatever arrives while a reply is already waiting), so a message costs four round trips
and four wake-ups of the event loop. When the server's EHLO offers PIPELINING (RFC 2920),
MAIL FROM, RCPT TO and DATA go out in one write and their three replies are read in order,
then the content; without it, the same commands one at a time (bench/README.md: 0.27 → 0.03 ms
of CPU per message against Postfix's smtp-sink).

A transaction ends in the final reply (:class:`Reply`, 250) or in :class:`Failed`, which says
at which step (``mail``, ``rcpt``, ``data``) and with which reply, or without one when the
connection was lost, timed out or sent something that is not SMTP. The first refusal in
command order decides; a lost connection counts at ``data`` only once the content has been
written (from then on the message may have been delivered). After a refusal the session stays
usable (RSET, and a lone "." first when the server answered DATA with 354 anyway, RFC 2920
§3.1); after anything else it is closed.

Example (inside a coroutine, ``client`` connected by aiosmtplib)::

    session = SmtpSession.take_over(client, timeout_s=30.0)
    outcome = await session.transaction(
        b"crm@shop.example.com", b"kim@example.com", b"Subject: hi\\r\\n\\r\\nhello\\r\\n"
    )
    if isinstance(outcome, Failed):
        print(outcome.phase, outcome.reply, outcome.why)
    await session.close()
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import aiosmtplib

from worker.channels.replies import Phase

#: A reply longer than this (all its lines) is not SMTP: the session is dropped. aiosmtplib
#: bounds its replies the same way (``MAX_RESPONSE_LENGTH``).
MAX_REPLY_BYTES = 32 * 1024
#: Every line break a message may contain, for RFC 5321's CRLF (as aiosmtplib's DATA does).
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
#: A line that starts with "." gets a second one (RFC 5321 4.5.2, transparency).
_LEADING_DOT = re.compile(rb"(?m)^\.")
#: A plain mailbox that needs no parsing to go between "<" and ">" on a command line.
_PLAIN_ADDRESS = re.compile(r'[^\s<>"()\[\]\\,;:\x00-\x1f\x7f]+@[^\s<>"()\[\]\\,;:\x00-\x1f\x7f]+')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLOSING = 421  # the server is going away; it closes the connection after this reply


class Reply(NamedTuple):
    """One SMTP reply: its code and its text, a multi-line reply's lines joined by "\\n"."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Failed:
    """A transaction that did not end in 250: the step whose ``reply`` refused it, or, with
    ``reply`` None, the step at which the connection was lost (``why`` says how)."""

    phase: Phase
    reply: Reply | None
    why: str = ""


def envelope_address(address: str, encoding: str) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO. A plain ``local@domain`` is taken as is;
    anything else goes through aiosmtplib's parser (a display name is dropped, a mailbox
    with spaces or angle brackets outside quotes refused) after a refusal of control
    characters, which could end the command (aiosmtplib checks those on the command line,
    which we now write ourselves). Raises ValueError."""
    if _PLAIN_ADDRESS.fullmatch(address) is not None:
        return b"<" + address.encode(encoding) + b">"
    if _CONTROL.search(address):
        raise ValueError(f"address {address!r} contains a control character")
    return aiosmtplib.email.quote_address(address).encode(encoding)


def wire_content(data: bytes) -> bytes:
    """The message as DATA sends it: every line ending CRLF, a final CRLF, leading dots
    doubled, and the terminating ".\\r\\n"."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data + b".\r\n"


class SmtpSession(asyncio.Protocol):
    """The protocol of one SMTP connection after its greeting, EHLO and AUTH.

    ``pipelining``, ``eightbitmime`` and ``smtputf8``: what the server's EHLO offered.
    ``timeout_s``: how long each reply may take."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        *,
        pipelining: bool,
        eightbitmime: bool,
        smtputf8: bool,
        timeout_s: float,
    ) -> None:
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.timeout_s = timeout_s
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[Reply | None] | None = None
        #: Why the connection can no longer be used ("" while it can).
        self._lost = ""

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP, *, timeout_s: float) -> SmtpSession:
        """Move ``client``'s connection to a new session; ``client`` must not be used again
        (its protocol no longer receives anything, and the session closes the transport)."""
        transport = client.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("the SMTP connection is closed")
        session = cls(
            transport,
            pipelining=client.supports_extension("pipelining"),
            eightbitmime=client.supports_extension("8bitmime"),
            smtputf8=client.supports_extension("smtputf8"),
            timeout_s=timeout_s,
        )
        transport.set_protocol(session)
        client.protocol = client.transport = None  # forget it, so nothing of it closes ours
        return session

    @property
    def is_open(self) -> bool:
        """Usable for the next transaction: connected, and no reply came unasked (a server
        that says 421 while idle is about to hang up)."""
        return not self._lost and not self._replies and not self._transport.is_closing()

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            start, end = 0, buffer.find(b"\n")
            # A multi-line reply ("250-…" lines) ends with its first line without the dash.
            while end >= 0 and buffer[start + 3 : start + 4] == b"-":
                start, end = end + 1, buffer.find(b"\n", end + 1)
            if end < 0:
                if len(buffer) > MAX_REPLY_BYTES:
                    self._lose("the server sent an over-long reply")
                return
            reply = _parse(bytes(buffer[: end + 1]))
            del buffer[: end + 1]
            if reply is None:
                self._lose("the server sent something that is not an SMTP reply")
                return
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
            else:
                self._replies.append(reply)

    def eof_received(self) -> bool:
        self._lose("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection lost: {type(exc).__name__}" if exc else "connection closed"
        self._lose(why)

    # transactions

    async def transaction(
        self, sender: bytes, recipient: bytes, data: bytes, *, mail_options: Sequence[str] = ()
    ) -> Reply | Failed:
        """Send one message from ``sender`` to ``recipient`` (both ``<…>``, see
        :func:`envelope_address`); ``data``: the message, any line endings. ``mail_options``:
        parameters of MAIL FROM (``BODY=8BITMIME``, ``SMTPUTF8``) as aiosmtplib's ``mail()``
        takes them; the caller checks that the server offered them
        (:mod:`worker.channels.smtp_extensions`)."""
        mail = b"".join([b"MAIL FROM:", sender, *(b" " + o.encode("ascii") for o in mail_options)])
        steps: tuple[tuple[bytes, Phase, tuple[int, ...]], ...] = (
            (mail + b"\r\n", "mail", (250,)),
            (b"RCPT TO:" + recipient + b"\r\n", "rcpt", (250, 251)),
            (b"DATA\r\n", "data", (354,)),
        )
        content = wire_content(data)  # before anything is written: it cannot fail halfway
        if not self.is_open:
            self._lose("the server sent a reply nobody asked for" if self._replies else "closed")
            return Failed("mail", None, self._lost)
        try:
            if self.pipelining:
                self._write(b"".join(command for command, _, _ in steps))
            refused: Failed | None = None
            reply: Reply | None = None
            for command, phase, expected in steps:
                if not self.pipelining:
                    self._write(command)
                reply = await self._reply()
                if reply is None:  # nothing handed over yet: "data" is for after the content
                    before: Phase = "mail" if phase == "mail" else "rcpt"
                    return refused or Failed(before, None, self._lost)
                if refused is None and reply.code not in expected:
                    refused = Failed(phase, reply)
                    if not self.pipelining:
                        break
            if refused is not None:
                await self._recover(refused, data_accepted=reply is not None and reply.code == 354)
                return refused
            self._write(content)
            final = await self._reply()
            if final is None:
                return Failed("data", None, self._lost)
            if final.code == _CLOSING:
                self._abort()
            if final.code != 250:
                return Failed("data", final)
            return final
        except BaseException:  # cancelled mid-dialogue: replies would pair with wrong commands
            self._lose("the transaction was interrupted")
            raise

    async def noop(self) -> bool:
        """Probe an idle connection: True when the server still answers 250."""
        self._write(b"NOOP\r\n")
        reply = await self._reply()
        return reply is not None and reply.code == 250

    async def close(self) -> None:
        """QUIT (its reply awaited within the timeout), then close the connection."""
        if self.is_open:
            self._write(b"QUIT\r\n")
            await self._reply()
        if not self._lost:
            self._lost = "closed"
            self._transport.close()

    async def _recover(self, refused: Failed, *, data_accepted: bool) -> None:
        """Make the session usable after a refusal, or close it."""
        if refused.reply is not None and refused.reply.code == _CLOSING:
            self._abort()
            return
        if data_accepted:  # RFC 2920 §3.1: DATA said 354 after all; end it empty
            self._write(b".\r\n")
            await self._reply()
        self._write(b"RSET\r\n")
        reply = await self._reply()
        if reply is None or reply.code != 250:
            self._lose("RSET was not accepted")

    # replies and the connection

    def _write(self, data: bytes) -> None:
        if not self._lost:  # a closed transport would drop it with a warning; _reply says why
            self._transport.write(data)

    async def _reply(self) -> Reply | None:
        """The next reply, or None when the connection is lost or the reply is late (the
        session is then closed: a late reply would pair with the next command)."""
        if self._replies:
            return self._replies.popleft()
        if self._lost:
            return None
        waiter: asyncio.Future[Reply | None] = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(self.timeout_s, self._time_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self, waiter: asyncio.Future[Reply | None]) -> None:
        if not waiter.done():
            self._lose(f"no reply within {self.timeout_s:g} s")

    def _lose(self, why: str) -> None:
        """The connection is unusable: drop it (nothing still buffered is sent)."""
        if not self._lost:
            self._lost = why
            self._transport.abort()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self) -> None:
        self._lose("the server is closing the connection")


def _parse(raw: bytes) -> Reply | None:
    """One complete reply (all its lines, each ending in LF); None if it is not SMTP. The
    code is the last line's, as aiosmtplib reads it."""
    if raw[3:4] != b"-":  # one line, the usual case
        if not raw[:3].isdigit():
            return None
        return Reply(int(raw[:3]), raw[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
    lines = raw.split(b"\n")
    lines.pop()  # after the last LF
    texts = []
    for line in lines:
        if len(line) < 3 or not line[:3].isdigit():
            return None
        texts.append(line[4:].strip(b" \t\r"))
    return Reply(int(lines[-1][:3]), b"\n".join(texts).decode("utf-8", "surrogateescape"))
