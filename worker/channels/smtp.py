"""Email over SMTP with aiosmtplib, kept-open connections per worker thread.

Dramatiq runs actors in threads; each thread gets its own event loop (``asyncio.Runner``) and
``CRM_SMTP_CONNECTIONS`` SMTP connections (default one), reused across messages, so no message
pays for a new TCP/TLS handshake. A batch (:meth:`SmtpChannel.send_each`) goes out over all of
them at once from the one loop: a loop that serves several connections wakes up once for
several replies, which cuts the CPU per message by a third on loopback (bench/README.md). Each
connection carries one message at a time, so at most ``threads × connections`` messages per
process are between the relay's reply and its record in the ledger. A connection idle longer
than ``CRM_SMTP_IDLE_CHECK_S`` is probed with NOOP (the server may have dropped it), one idle
longer than ``CRM_SMTP_IDLE_TIMEOUT_S`` is replaced without asking.

The dialogue runs step by step (MAIL, RCPT, DATA) so that every reply is classified knowing
which step it answered (:mod:`worker.replies`): a lost connection before DATA is transient, one
during DATA may have delivered the message and is ``unknown``. Credentials never appear in
errors or logs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiosmtplib

from worker.channels.base import Done, Outgoing, Receipt
from worker.errors import PermanentDeliveryError, RelayUnavailableError
from worker.metrics import SMTP_SEND_SECONDS
from worker.replies import Phase, classify, delivery_error
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Connection:
    client: aiosmtplib.SMTP | None = None
    last_used: float = 0.0


@dataclass
class _ThreadState:
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    connections: list[_Connection] = field(default_factory=list)


class SmtpChannel:
    """Sends prepared messages to the configured relay."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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

    async def _connected(self, connection: _Connection) -> aiosmtplib.SMTP:
        client = connection.client
        if client is not None and client.is_connected:
            idle_s = time.monotonic() - connection.last_used
            if idle_s < self.settings.smtp_idle_check_s:
                return client
            if idle_s < self.settings.smtp_idle_timeout_s:
                try:
                    await client.noop()
                    return client
                except (aiosmtplib.SMTPException, OSError):
                    log.info("idle SMTP connection was closed by the server; reconnecting")
            await _discard(connection)
        client = self._new_client()
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # without TLS or login, connect() sends no EHLO
                await client.ehlo()
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
        connection.client = client
        return client

    def _where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.effective_smtp_port}"

    async def _send(self, connection: _Connection, message: Outgoing) -> Receipt:
        client = await self._connected(connection)
        # A non-ASCII local part (jürgen@…) exists only under SMTPUTF8 (RFC 6531).
        utf8 = not message.recipient.isascii()
        if utf8 and not client.supports_extension("smtputf8"):
            raise PermanentDeliveryError(
                "the SMTP relay does not offer SMTPUTF8, which this non-ASCII address needs"
            )
        encoding = "utf-8" if utf8 else "ascii"
        phase: Phase = "mail"
        started = time.perf_counter()
        try:
            await client.mail(
                message.sender, options=["SMTPUTF8"] if utf8 else [], encoding=encoding
            )
            phase = "rcpt"
            await client.rcpt(message.recipient, encoding=encoding)
            phase = "data"
            response = await client.data(message.data)
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(connection)
            what = "recipient refused" if phase == "rcpt" else "refused by the SMTP server"
            verdict = classify(exc.code, exc.message, phase=phase)
            raise delivery_error(verdict, what, code=exc.code, reply=exc.message) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await _discard(connection)
            verdict = classify(None, type(exc).__name__, phase=phase)
            what = (
                "connection lost after the message was handed over; it may have been delivered"
                if verdict == "unknown"
                else "connection lost"
            )
            error = delivery_error(verdict, f"{what}: {type(exc).__name__}", code=None, reply="")
            raise error from None
        finally:
            SMTP_SEND_SECONDS.observe(time.perf_counter() - started)
        connection.last_used = time.monotonic()
        return Receipt(f"{response.code} {response.message}")

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


async def _reset(connection: _Connection) -> None:
    """After a refused MAIL/RCPT/DATA the transaction is open; RSET keeps the connection
    usable for the next message (drop it when even that fails)."""
    client = connection.client
    if client is None or not client.is_connected:
        return
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        await _discard(connection)


async def _discard(connection: _Connection) -> None:
    client, connection.client = connection.client, None
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
