"""Email over SMTP with aiosmtplib, one kept-open connection per worker thread.

Dramatiq runs actors in threads; each thread gets its own event loop (``asyncio.Runner``) and
its own SMTP connection, reused across messages, so the number of connections equals the number
of worker threads and no message pays for a new TCP/TLS handshake. A connection idle longer
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
from dataclasses import dataclass, field

import aiosmtplib

from worker.channels.base import Outgoing, Receipt
from worker.errors import PermanentDeliveryError, RelayUnavailableError
from worker.metrics import SMTP_SEND_SECONDS
from worker.replies import Phase, classify, delivery_error
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _ThreadState:
    runner: asyncio.Runner = field(default_factory=asyncio.Runner)
    client: aiosmtplib.SMTP | None = None
    last_used: float = 0.0


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
            state = _ThreadState()
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def send(self, message: Outgoing) -> Receipt:
        state = self._state()
        return state.runner.run(self._send(state, message))

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

    async def _connected(self, state: _ThreadState) -> aiosmtplib.SMTP:
        client = state.client
        if client is not None and client.is_connected:
            idle_s = time.monotonic() - state.last_used
            if idle_s < self.settings.smtp_idle_check_s:
                return client
            if idle_s < self.settings.smtp_idle_timeout_s:
                try:
                    await client.noop()
                    return client
                except (aiosmtplib.SMTPException, OSError):
                    log.info("idle SMTP connection was closed by the server; reconnecting")
            await _discard(state)
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
        state.client = client
        return client

    def _where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.effective_smtp_port}"

    async def _send(self, state: _ThreadState, message: Outgoing) -> Receipt:
        client = await self._connected(state)
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
            await _reset(state)
            what = "recipient refused" if phase == "rcpt" else "refused by the SMTP server"
            verdict = classify(exc.code, exc.message, phase=phase)
            raise delivery_error(verdict, what, code=exc.code, reply=exc.message) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await _discard(state)
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
        state.last_used = time.monotonic()
        return Receipt(f"{response.code} {response.message}")

    def close(self) -> None:
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            try:
                state.runner.run(_discard(state))
                state.runner.close()
            except RuntimeError:  # runner owned by a thread that is still running it
                continue


async def _reset(state: _ThreadState) -> None:
    """After a refused MAIL/RCPT/DATA the transaction is open; RSET keeps the connection
    usable for the next message (drop it when even that fails)."""
    client = state.client
    if client is None or not client.is_connected:
        return
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        await _discard(state)


async def _discard(state: _ThreadState) -> None:
    client, state.client = state.client, None
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
