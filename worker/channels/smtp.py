"""Email over SMTP: aiosmtplib opens kept-open connections per worker thread, our own
:mod:`~worker.channels.smtp_session` sends the messages over them.

Dramatiq runs actors in threads; each thread gets its own event loop (``asyncio.Runner``) and
``CRM_SMTP_CONNECTIONS`` SMTP connections (default one), reused across messages, so no message
pays for a new TCP/TLS handshake. A batch (:meth:`SmtpChannel.send_each`) goes out over all of
them at once from the one loop: a loop that serves several connections wakes up once for
several replies, which cuts the CPU per message by a third on loopback (bench/README.md). Each
connection carries one message at a time, so at most ``threads × connections`` messages per
process are between the relay's reply and its record in the ledger. A connection idle longer
than ``CRM_SMTP_IDLE_CHECK_S`` is probed with NOOP (the server may have dropped it), one idle
longer than ``CRM_SMTP_IDLE_TIMEOUT_S`` is replaced without asking.

aiosmtplib connects, negotiates TLS (implicit or STARTTLS, with its certificate checks), says
EHLO and logs in; then the connection moves to an :class:`SmtpSession`, which pipelines MAIL,
RCPT and DATA when the relay offers PIPELINING (two round trips per message instead of four,
and an eighth of aiosmtplib's CPU per message: bench/README.md). Every reply is classified
knowing which step it answered (:mod:`worker.channels.replies`): a lost connection before the
content was written is transient, one after it may have delivered the message and is ``unknown``.
MAIL FROM carries ``BODY=8BITMIME`` and ``SMTPUTF8`` when the message needs them and the relay
offers them; a relay without 8BITMIME gets the message's 7-bit form
(:mod:`worker.channels.smtp_extensions`). Credentials never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiosmtplib

from worker.channels.base import Done, Outgoing, Receipt
from worker.channels.replies import classify, delivery_error
from worker.channels.smtp_extensions import submission
from worker.channels.smtp_session import Failed, SmtpSession, envelope_address
from worker.errors import RelayUnavailableError
from worker.metrics import SMTP_SEND_SECONDS
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Connection:
    session: SmtpSession | None = None
    last_used: float = 0.0


@dataclass
class _ThreadState:
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    connections: list[_Connection] = field(default_factory=list)


class SmtpChannel:
    """Sends prepared messages to the configured relay. ``sign`` is the DKIM signer of the
    composed messages: a message re-encoded for a relay without 8BITMIME is signed again."""

    def __init__(self, settings: Settings, *, sign: Callable[[bytes], bytes] | None = None) -> None:
        self.settings = settings
        self.sign = sign
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            count = self.settings.smtp_connections
            state = _ThreadState(connections=[_Connection() for _ in range(count)])
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def send(self, message: Outgoing) -> Receipt:
        state = self._state()
        return state.runner.run(self._send(state.connections[0], message))

    def send_each(self, messages: Iterable[Outgoing], done: Done) -> None:
        """Send a batch over this thread's connections in one run of its event loop; each
        connection takes the next message once ``done`` has heard the outcome of its last."""
        state = self._state()
        queue = iter(messages)  # shared: each next() runs to its end before another starts

        async def sending(connection: _Connection) -> None:
            for message in queue:
                try:
                    receipt = await self._send(connection, message)
                except Exception as exc:  # classified by the caller, as a raise from send()
                    done(message, exc)
                else:
                    done(message, receipt)
                # Let the other connections answered in this turn report too before this one
                # takes its next message: the caller can then record them in one round trip.
                await asyncio.sleep(0)

        async def all_connections() -> None:
            tasks = [asyncio.ensure_future(sending(c)) for c in state.connections]
            try:
                await asyncio.gather(*tasks)
            finally:  # one failed (the ledger is unreachable): stop the others with it
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        state.runner.run(all_connections())

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.effective_smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_s,
            cert_bundle=str(s.smtp_ca_file) if s.smtp_ca_file else None,
        )

    async def _connected(self, connection: _Connection) -> SmtpSession:
        session = connection.session
        if session is not None and session.is_open:
            idle_s = time.monotonic() - connection.last_used
            if idle_s < self.settings.smtp_idle_check_s:
                return session
            if idle_s < self.settings.smtp_idle_timeout_s:
                if await session.noop():
                    connection.last_used = time.monotonic()
                    return session
                log.debug("idle SMTP connection was closed by the server; reconnecting")
        if session is not None:
            await _discard(connection)
        client = self._new_client()
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # without TLS or login, connect() sends no EHLO
                await client.ehlo()
            session = SmtpSession.take_over(client, timeout_s=self.settings.smtp_timeout_s)
        except aiosmtplib.SMTPResponseException as exc:
            client.close()  # a session refused after connecting (535) would stay half-open
            # 535 bad credentials, 554 at the greeting: our problem, never the recipient's.
            verdict = classify(exc.code, exc.message, phase="connect")
            what = f"{self._where()} refused the session"
            if verdict == "transient":  # 421 at the greeting: the relay is busy or going down
                raise RelayUnavailableError(what, code=exc.code, reply=exc.message) from None
            raise delivery_error(verdict, what, code=exc.code, reply=exc.message) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise RelayUnavailableError(
                f"cannot connect to {self._where()}: {type(exc).__name__}: {exc}"
            ) from None
        connection.session, connection.last_used = session, time.monotonic()
        return session

    def _where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.effective_smtp_port}"

    async def _send(self, connection: _Connection, message: Outgoing) -> Receipt:
        session = await self._connected(connection)
        # BODY=8BITMIME / SMTPUTF8 as this relay offers them, or the message's 7-bit form;
        # raises Utf8UnsupportedError (permanent for this message only, never for the batch).
        outgoing = submission(
            message.sender,
            message.recipient,
            message.data,
            eightbitmime=session.eightbitmime,
            smtputf8=session.smtputf8,
            sign=self.sign,
        )
        encoding = "utf-8" if outgoing.utf8 else "ascii"
        sender = envelope_address(message.sender, encoding)
        recipient = envelope_address(message.recipient, encoding)
        started = time.perf_counter()
        try:
            outcome = await session.transaction(
                sender, recipient, outgoing.data, mail_options=outgoing.mail_options
            )
        finally:
            SMTP_SEND_SECONDS.observe(time.perf_counter() - started)
        connection.last_used = time.monotonic()  # refused or not: it just answered
        if isinstance(outcome, Failed):
            if not session.is_open:
                await _discard(connection)
            raise _error(outcome) from None
        return Receipt(str(outcome))

    def close(self) -> None:
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            try:
                for connection in state.connections:
                    state.runner.run(_discard(connection))
                state.runner.close()
            except RuntimeError:  # runner owned by a thread that is still running it
                continue


def _error(failed: Failed) -> Exception:
    """The :mod:`worker.errors` exception for a failed transaction."""
    reply = failed.reply
    if reply is not None:
        what = "recipient refused" if failed.phase == "rcpt" else "refused by the SMTP server"
        verdict = classify(reply.code, reply.text, phase=failed.phase)
        return delivery_error(verdict, what, code=reply.code, reply=reply.text)
    verdict = classify(None, failed.why, phase=failed.phase)
    what = (
        "connection lost after the message was handed over; it may have been delivered"
        if verdict == "unknown"
        else "connection lost"
    )
    return delivery_error(verdict, f"{what}: {failed.why}", code=None, reply="")


async def _discard(connection: _Connection) -> None:
    session, connection.session = connection.session, None
    if session is not None:
        await session.close()
