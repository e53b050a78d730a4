"""Email over SMTP with aiosmtplib, one kept-open connection per worker thread.

Dramatiq runs actors in threads; each thread gets its own event loop (``asyncio.Runner``) and
its own SMTP connection, reused across messages, so the number of connections equals the number
of worker threads and no message pays for a new TCP/TLS handshake. An idle connection the server
has closed is noticed (NOOP after a pause) and reopened before the message is sent.

Replies are classified by code: 4xx, timeouts and lost connections are transient (retry later),
5xx for a recipient is permanent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import aiosmtplib

from worker.channels.base import Outgoing, Receipt
from worker.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from worker.settings import Settings

log = logging.getLogger(__name__)

#: A connection idle longer than this is checked with NOOP before use (servers drop idle
#: clients after 30-300 s; RFC 5321 asks servers to wait at least 5 minutes).
IDLE_CHECK_AFTER_S = 20.0


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
        )

    async def _connected(self, state: _ThreadState) -> aiosmtplib.SMTP:
        client = state.client
        if client is not None and client.is_connected:
            if time.monotonic() - state.last_used < IDLE_CHECK_AFTER_S:
                return client
            try:
                await client.noop()
                return client
            except aiosmtplib.SMTPException:
                log.info("idle SMTP connection was closed by the server; reconnecting")
        client = self._new_client()
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Our credentials, not the recipient: retry later, never blame the address.
            raise TransientDeliveryError(
                "SMTP authentication failed; check CRM_SMTP_USERNAME/CRM_SMTP_PASSWORD",
                code=exc.code,
                reply=exc.message,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(
                f"cannot connect to {self.settings.smtp_host}:{self.settings.effective_smtp_port}: "
                f"{type(exc).__name__}"
            ) from None
        state.client = client
        return client

    async def _send(self, state: _ThreadState, message: Outgoing) -> Receipt:
        client = await self._connected(state)
        # A non-ASCII local part (jürgen@…) exists only under SMTPUTF8 (RFC 6531).
        options = [] if message.recipient.isascii() else ["SMTPUTF8"]
        try:
            _, reply = await client.sendmail(
                message.sender, [message.recipient], message.data, mail_options=options
            )
        except aiosmtplib.SMTPNotSupported:
            raise PermanentDeliveryError(
                "the SMTP relay does not offer SMTPUTF8, which this non-ASCII address needs"
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            raise _classified(refusal.code, refusal.message, "recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 400:
                raise _classified(exc.code, exc.message, "refused by the SMTP server") from None
            raise TransientDeliveryError(
                "unexpected SMTP reply", code=exc.code, reply=exc.message
            ) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await _discard(state)
            raise TransientDeliveryError(f"connection lost: {type(exc).__name__}") from None
        state.last_used = time.monotonic()
        return Receipt(reply)

    def close(self) -> None:
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            try:
                state.runner.run(_discard(state))
                state.runner.close()
            except RuntimeError:  # runner owned by a thread that is still running it
                continue


def _classified(code: int, reply: str, what: str) -> DeliveryError:
    if 400 <= code < 500:
        return TransientDeliveryError(what, code=code, reply=reply)
    return PermanentDeliveryError(what, code=code, reply=reply)


async def _discard(state: _ThreadState) -> None:
    client, state.client = state.client, None
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
