"""A CRM's receiving end for suppression events: a real HTTP server in a thread that checks
each request's signature as a CRM would, and keeps what it took.

It can be stopped and started again on the same port (the CRM is down, then back) and told
to answer with an error status (the CRM is up but failing).
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.channels.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

#: A CRM rejects a request signed longer ago than this (a replay).
MAX_AGE_S = 300


@dataclass
class CrmReceiver:
    """What the CRM took (``events``, in order of arrival), and what it refused."""

    secret: bytes
    port: int = 0
    #: Answer every request with this status instead of taking it (e.g. 503).
    failing: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: ``Idempotency-Key`` of each request taken, in order.
    keys: list[str] = field(default_factory=list)
    #: Requests whose signature or timestamp was wrong (never expected).
    forged: int = 0
    #: Requests answered with ``failing``.
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/crm/suppression-events"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = receiver.take(dict(self.headers.items()), body, self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The CRM goes down: the port refuses connections until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def take(self, headers: dict[str, str], body: bytes, path: str) -> int:
        if self.failing is not None:
            with self.lock:
                self.refused += 1
            return self.failing
        stamp = headers.get(TIMESTAMP_HEADER, "")
        expected = signature(self.secret, stamp, body)
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= MAX_AGE_S
        genuine = hmac.compare_digest(expected, headers.get(SIGNATURE_HEADER, ""))
        typed = headers.get("Content-Type") == "application/json"
        if not (fresh and genuine and typed and path == "/crm/suppression-events"):
            with self.lock:
                self.forged += 1
            return 401
        with self.lock:
            self.events.append(json.loads(body))
            self.keys.append(headers.get(IDEMPOTENCY_HEADER, ""))
        return 204

    def types(self) -> list[tuple[str, str]]:
        """(type, address) of each event taken, in order."""
        with self.lock:
            return [(e["type"], e["address"]) for e in self.events]
