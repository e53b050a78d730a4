"""How uvicorn serves the intake to the internet: bounded connections, slow clients cut off.

uvicorn alone keeps every accepted connection until its client sends complete headers, however
long that takes, and counts a connection against ``limit_concurrency`` only once its headers
are complete; 20,000 connections that never finish their headers exhaust the process's file
descriptors (``accept()`` then fails in a loop and ``/health`` stops answering). Its
``timeout_keep_alive`` covers only the wait between requests. So the intake uses uvicorn's h11
protocol with two additions (:class:`GuardedProtocol`):

* at most :attr:`ServerLimits.max_connections` open connections; one more is answered ``503``
  with ``Retry-After`` and closed at once, before it holds anything;
* a request's headers must arrive within ``header_timeout_s`` and its body within
  ``body_timeout_s`` (each counted from its start, so trickling a byte at a time does not
  help); else ``408`` and the connection is closed;
* on shutdown, a request whose body is still arriving is answered ``503`` and closed at once
  (uvicorn would wait for it), so a slow client cannot hold the process;
* request line and headers over :data:`~worker.constants.MAX_INTAKE_HEADER_BYTES` are answered
  ``431`` and the connection closed (h11's own cap applies only to headers still incomplete
  after a read: 70 KB of headers arriving in one read were taken whole), after the rest of
  what the client sends is read and dropped for a moment, so that it gets the answer. They are
  measured in h11's buffer each time h11 is about to parse a request (:class:`_CappedHeaders`),
  not per read: on a kept-alive connection one read may hold the end of the previous request
  (pipelined, or the body of a request answered before it was read) and all of the next one.

uvicorn's own settings do the rest: a graceful shutdown bounded by ``shutdown_timeout_s``,
``keep_alive_s`` between requests.

Example::

    config = server_config(app, host="127.0.0.1", port=8080, limits=ServerLimits.from_settings(s))
    with throttled_logs():
        uvicorn.Server(config).run()
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from worker.constants import (
    INTAKE_ACCEPTING_FDS,
    INTAKE_LISTEN_BACKLOG,
    INTAKE_LOG_INTERVAL_S,
    INTAKE_REFUSED_DRAIN_BYTES,
    INTAKE_REFUSED_LINGER_S,
    INTAKE_RETRY_AFTER_S,
    INTAKE_SPARE_FDS,
    MAX_INTAKE_HEADER_BYTES,
)
from worker.settings import Settings
from worker.web.throttle import ThrottleFilter

log = logging.getLogger(__name__)

#: Loggers whose warnings and errors are throttled while the intake runs: uvicorn's (one per bad
#: request), asyncio's (accept() failures), and the intake's own.
THROTTLED_LOGGERS = (
    "uvicorn.error",
    "asyncio",
    "worker.web.intake.app",
    "worker.web.unsubscribe_pages",
    __name__,
)

Phase = Literal["headers", "body"]


def _raw_answer(status: str, reason: str, *extra: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, written without h11 (the
    connection is being given up, whatever state its request is in)."""
    body = f'{{"error": "{reason}", "field": null}}'.encode("ascii")
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


_BUSY = _raw_answer(
    "503 Service Unavailable",
    "too many open connections; retry later",
    f"Retry-After: {INTAKE_RETRY_AFTER_S}",
)
_SHUTTING_DOWN = _raw_answer(
    "503 Service Unavailable",
    "the intake is shutting down; retry",
    f"Retry-After: {INTAKE_RETRY_AFTER_S}",
)
_TOO_SLOW = _raw_answer("408 Request Timeout", "the request was not sent in time")
_HEADERS_TOO_LARGE = _raw_answer(
    "431 Request Header Fields Too Large",
    f"request line and headers over {MAX_INTAKE_HEADER_BYTES} bytes",
)


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of the intake, and how long shutting down may take."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_s: int
    shutdown_timeout_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_connections=settings.intake_max_connections,
            header_timeout_s=settings.intake_header_timeout_s,
            body_timeout_s=settings.intake_body_timeout_s,
            keep_alive_s=settings.intake_keep_alive_s,
            shutdown_timeout_s=settings.intake_shutdown_timeout_s,
        )

    def within_descriptors(self, soft_limit: int) -> ServerLimits:
        """These limits with ``max_connections`` lowered to what ``soft_limit`` open files
        leave, after connections being accepted and the process's own files (Redis, logs)."""
        room = max(1, soft_limit - INTAKE_ACCEPTING_FDS - INTAKE_SPARE_FDS)
        if self.max_connections <= room:
            return self
        return ServerLimits(
            max_connections=room,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
            shutdown_timeout_s=self.shutdown_timeout_s,
        )


#: Where h11 ends a request line and headers (it accepts bare ``\n`` line ends too).
_HEADERS_END = re.compile(b"\n\r?\n")


class _HeadersOverCap(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A request line and headers over :data:`MAX_INTAKE_HEADER_BYTES` are next in the buffer."""


class _CappedHeaders(h11.Connection):
    """h11's connection, refusing to parse a request whose line and headers are over the cap.

    Checked each time h11 is asked for an event while awaiting a request, on what it has
    received and not parsed yet: that holds all of the next request's bytes however they were
    read (in pieces, or in one read with the end of the request before)."""

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.their_state is h11.IDLE:
            buffered, _ = self.trailing_data
            # Over the cap unless the headers end within its first MAX_INTAKE_HEADER_BYTES.
            if len(buffered) > MAX_INTAKE_HEADER_BYTES and (
                _HEADERS_END.search(buffered, 0, MAX_INTAKE_HEADER_BYTES) is None
            ):
                raise _HeadersOverCap
        return super().next_event()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, header/body read deadlines and a header
    size cap."""

    limits: ClassVar[ServerLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _CappedHeaders(h11.SERVER, max_incomplete_event_size=MAX_INTAKE_HEADER_BYTES)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase | None = None
        #: Set once a request was refused unread: what still arrives is dropped (this many
        #: bytes more at most) until the connection closes.
        self._draining: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection refused (503): %d open, the limit", self.limits.max_connections)
            transport.write(_BUSY)
            transport.close()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self._draining is not None:
            self._draining -= len(data)
            if self._draining < 0:
                self.transport.close()
            return
        super().data_received(data)
        self._follow()

    def handle_events(self) -> None:
        # Called on each read, and once a response is complete for requests already read.
        try:
            super().handle_events()
        except _HeadersOverCap:
            log.warning("request refused (431): headers over %d bytes", MAX_INTAKE_HEADER_BYTES)
            self._refuse_unread(_HEADERS_TOO_LARGE)

    def _refuse_unread(self, answer: bytes) -> None:
        """Answer and close, reading and dropping what the client still sends for a moment."""
        self._watch(None)
        self._draining = INTAKE_REFUSED_DRAIN_BYTES
        self.flow.resume_reading()  # paused if a request before was being answered
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(INTAKE_REFUSED_LINGER_S, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def shutdown(self) -> None:
        # uvicorn lets a request finish on shutdown, and one whose client trickles its body
        # would hold the process until the client gives up. A request not yet read cannot be
        # acted on anyway: it is answered 503 (the CRM retries elsewhere or later) and closed.
        if self.conn.their_state is h11.SEND_BODY and not (
            self.cycle is not None and self.cycle.response_started
        ):
            log.warning("connection closed (503): request body still arriving at shutdown")
            self.transport.write(_SHUTTING_DOWN)
            self.transport.close()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch(None)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Watch the part of the request the client owes now, if any."""
        if self.transport.is_closing() or self._draining is not None:
            self._watch(None)
        elif self.conn.their_state is h11.SEND_BODY:
            self._watch("body")
        elif self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
            # Waiting for headers: on a new connection, or once a kept-alive one sends again
            # (uvicorn's keep-alive timer watches the quiet wait between requests).
            self._watch("headers")
        else:  # the request is read: the app answers, or the connection is closing
            self._watch(None)

    def _watch(self, phase: Phase | None) -> None:
        if phase == self._phase:
            return  # a deadline runs from the start of its phase, not from the last byte
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            timeout_s = (
                self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
            )
            self._deadline = self.loop.call_later(timeout_s, self._expired, phase, timeout_s)

    def _expired(self, phase: Phase, timeout_s: float) -> None:
        self._deadline = None
        self._phase = None
        if self.transport.is_closing():
            return
        # The phase is part of the template: slow headers and slow bodies are two kinds of
        # trouble, each logged (throttled) on its own.
        log.warning(f"connection closed (408): request {phase} not received within %s s", timeout_s)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_TOO_SLOW)
        self.transport.close()


def server_config(app: Any, *, host: str, port: int, limits: ServerLimits) -> uvicorn.Config:
    """The uvicorn configuration of the intake: ``app`` on ``host``:``port`` under ``limits``."""

    class Protocol(GuardedProtocol):
        pass

    Protocol.limits = limits
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=Protocol,
        # No WebSocket routes: an upgrade request is an ordinary (404) request.
        ws="none",
        # log_config=None: uvicorn logs through ours (crm-worker -v), not its own handlers.
        log_config=None,
        server_header=False,
        backlog=INTAKE_LISTEN_BACKLOG,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=limits.shutdown_timeout_s,
        h11_max_incomplete_event_size=MAX_INTAKE_HEADER_BYTES,
    )


def descriptor_limit() -> int:
    """How many files this process may open (the soft RLIMIT_NOFILE)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextmanager
def throttled_logs(interval_s: float = INTAKE_LOG_INTERVAL_S) -> Iterator[None]:
    """Within the block, each kind of warning or error of :data:`THROTTLED_LOGGERS` is logged
    at most once per ``interval_s`` (see :mod:`worker.web.throttle`)."""
    throttle = ThrottleFilter(interval_s)
    loggers = [logging.getLogger(name) for name in THROTTLED_LOGGERS]
    for logger in loggers:
        logger.addFilter(throttle)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(throttle)
