"""The public intake under hostile input, over real HTTP (uvicorn on 127.0.0.1, real Redis).

What probing the intake from outside found, one test each: every bad request is a 4xx with a
reason (a CRM retries any other answer forever), never a 5xx, and nothing is recorded."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests import test_intake as served
from tests.conftest import free_port
from tests.test_cli import base_env
from tests.test_intake import SECRET, TOKEN, assert_refused, event
from worker.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER
from worker.web.intake.auth import sign
from worker.web.throttle import LogThrottle

# The running intake (token and secret set) and its CRM, as in the intake's own tests.
crm = served.crm
intake = served.intake


@pytest.mark.parametrize(
    "timestamp",
    ["²".encode("latin-1"), "²".encode(), "١٧٠٠٠٠٠٠٠٠".encode(), b"9" * 400, b"-1", b""],
    ids=[
        "superscript-latin1",
        "superscript-utf8",
        "arabic-digits",
        "400-digits",
        "negative",
        "empty",
    ],
)
def test_an_unusable_signature_timestamp_is_401(intake, timestamp):
    url, runtime = intake
    data = json.dumps(event("crm-h1")).encode()
    genuine = sign(SECRET.encode(), data, 0)[SIGNATURE_HEADER]
    answer = httpx.post(
        f"{url}/events",
        content=data,
        headers={
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: genuine,
        },
        timeout=30,
    )
    assert answer.status_code == 401, answer.text
    assert runtime.redis.keys("crm:event:*") == []


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b"[" * 60_000, 400, None, "nested more than 32 levels"),  # within the body limit
        (b"[" * 30_000 + b"]" * 30_000, 400, None, "nested more than 32 levels"),
        (
            json.dumps(event("crm-h2", data={"deep": json.loads("[" * 40 + "]" * 40)})).encode(),
            400,
            "data",
            "nested more than 32 levels",
        ),
        (
            b'{"id": "crm-h3", "type": "purchase.created", "record_id": "P1", '
            b'"data": {"name": "\\ud800"}}',
            422,
            "data.name",
            "lone UTF-16 surrogate",
        ),
        (
            b'{"id": "crm-h4", "type": "purchase.created", "record_id": "P1", '
            b'"data": {"\\udfff": 1}}',
            422,
            "data",
            "lone UTF-16 surrogate",
        ),
        (
            json.dumps(event("crm-h5", at="0001-01-01T00:00:00+01:00")).encode(),
            422,
            "at",
            "outside the years 1-9999",
        ),
        (
            json.dumps(event("crm-h6", at="9999-12-31T23:59:59-01:00")).encode(),
            422,
            "at",
            "outside the years 1-9999",
        ),
    ],
    ids=[
        "nested-60000",
        "nested-30000-closed",
        "deep-data",
        "surrogate",
        "surrogate-key",
        "year-0",
        "year-10000",
    ],
)
def test_json_the_event_store_cannot_keep_is_a_4xx_with_a_reason(
    intake, body, status, field, words
):
    assert_refused(intake, body, status, field, words)


def test_a_trailing_slash_is_404_and_never_echoes_the_host(intake):
    url, _ = intake
    for method, path in [("POST", "/events/"), ("GET", "/health/"), ("GET", "/events//")]:
        answer = httpx.request(
            method,
            f"{url}{path}",
            headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers
        assert "evil.example" not in answer.text


@pytest.mark.parametrize("pieces", [1, 40], ids=["one-write", "in-pieces"])
@pytest.mark.parametrize("size", [9_000, 70_000])
def test_headers_over_the_cap_are_431_however_they_arrive(intake, size, pieces):
    # h11 caps only headers still incomplete after a read: 70 KB sent at once were taken
    # whole. And an answer written before the client finished sending was lost to a reset.
    url, runtime = intake
    port = int(url.rsplit(":", 1)[1])
    request = (
        f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"X-Junk: {'z' * size}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        step = -(-len(request) // pieces)
        for start in range(0, len(request), step):
            sock.sendall(request[start : start + step])
        assert answer_of(sock, 10) == "431"
    assert runtime.redis.keys("crm:event:*") == []


# --- the real `crm-worker intake` process: connections, shutdown, logs -----------------------


@contextmanager
def intake_process(
    tmp_path: Path, *, open_files: int | None = None, **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`crm-worker intake` on a free port with ``settings`` (and at most ``open_files`` file
    descriptors), once it answers /health; yields the process, its URL and its log file."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | base_env(tmp_path)
    env |= {"CRM_INTAKE_TOKEN": TOKEN, "CRM_INTAKE_PORT": str(port)} | settings
    log_path = tmp_path / "intake.log"

    def limit_files() -> None:
        if open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "from worker.cli import main; main()", "intake"],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_files,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert process.poll() is None, log_path.read_text()
        yield process, url, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def answer_of(sock: socket.socket, timeout_s: float) -> str:
    """The status code the intake sent on ``sock`` before closing it ('' for none)."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except OSError:  # a reset after the answer, or no answer in time
        pass
    sock.close()
    return received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/1.1 ") else ""


def lines_with(log_path: Path, words: str) -> list[str]:
    return [line for line in log_path.read_text().splitlines() if words in line]


def test_connections_that_never_finish_their_headers_cannot_take_the_intake_down(tmp_path):
    # 400 connections against a process that may open 256 files: without a limit, accept()
    # fails in a loop (EMFILE) and /health stops answering. With 50 allowed, the 51st and
    # later are answered 503 at once, the 50 held are answered 408 after the header timeout.
    with intake_process(
        tmp_path,
        open_files=256,
        CRM_INTAKE_MAX_CONNECTIONS="50",
        CRM_INTAKE_HEADER_TIMEOUT_S="10",
    ) as (process, url, log_path):
        port = int(url.rsplit(":", 1)[1])
        sockets = []

        def open_unfinished(count: int) -> None:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"POST /events HTTP/1.1\r\nHost: intake\r\nContent-Type: appl")
                sockets.append(sock)

        open_unfinished(60)
        during = httpx.get(f"{url}/health", timeout=10)  # every slot held: answered at once
        open_unfinished(340)
        files_open = len(list(Path(f"/proc/{process.pid}/fd").iterdir()))
        answers = Counter(answer_of(sock, timeout_s=30) for sock in sockets)
        health = httpx.get(f"{url}/health", timeout=10)
        assert process.poll() is None
    print(f"400 connections: {dict(answers)}; {files_open} files open; /health {during}")
    assert files_open < 256
    assert during.status_code == 503 and during.headers["Retry-After"] == "30"
    # Each was answered and closed; how many were held after the first 50 timed out depends on
    # how fast the 400 connect.
    assert answers["408"] >= 50 and answers["503"] >= 10, answers
    assert answers["503"] + answers["408"] == 400, answers
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert lines_with(log_path, "out of system resource") == []
    assert len(lines_with(log_path, "connection refused (503)")) == 1
    assert len(lines_with(log_path, "request headers not received within 10.0 s")) == 1


def test_a_slow_body_is_408_after_the_body_timeout(tmp_path):
    with intake_process(tmp_path, CRM_INTAKE_BODY_TIMEOUT_S="2") as (_, url, log_path):
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        sock.sendall(_SLOW_POST + b'{"id": ')
        assert answer_of(sock, timeout_s=20) == "408"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert len(lines_with(log_path, "request body not received within 2.0 s")) == 1
    assert lines_with(log_path, "Traceback") == []


_SLOW_POST = (
    b"POST /events HTTP/1.1\r\nHost: intake\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
)


def test_sigterm_ends_the_intake_while_a_client_trickles_its_body(tmp_path):
    with intake_process(
        tmp_path, CRM_INTAKE_SHUTDOWN_TIMEOUT_S="2", CRM_INTAKE_BODY_TIMEOUT_S="600"
    ) as (process, url, log_path):
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        sock.sendall(_SLOW_POST)
        stop = threading.Event()

        def trickle() -> None:  # one byte every 0.2 s for up to a minute, as a slow client does
            for _ in range(300):
                if stop.wait(0.2):
                    return
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        time.sleep(1)  # the request is in the app, reading its body
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)  # the client would go on for a minute
        finally:
            stop.set()
            sender.join(timeout=10)
        took_s = time.monotonic() - started
        answer = answer_of(sock, timeout_s=5)
    print(f"exited {took_s:.1f} s after SIGTERM with {process.returncode}; client got {answer}")
    # A clean stop: the intake closes its runtime (and an embedded Redis) and exits 0.
    assert process.returncode == 0, log_path.read_text()
    assert answer == "503"
    assert lines_with(log_path, "request body still arriving at shutdown")
    assert lines_with(log_path, "Traceback") == [], log_path.read_text()


def test_clients_hanging_up_mid_body_log_one_line_and_no_traceback(tmp_path):
    with intake_process(tmp_path) as (_, url, log_path):
        port = int(url.rsplit(":", 1)[1])
        unsubscribe = (
            b"POST /unsubscribe/some-token HTTP/1.1\r\nHost: intake\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            b"List-Unsub"
        )
        for request in [_SLOW_POST + b'{"id": "crm-', unsubscribe] * 10:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                time.sleep(0.05)  # the app is reading the body when the client goes
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                assert answer_of(sock, timeout_s=10) == "400"
        for _ in range(100):  # bounded wait for the hang-ups to reach the app
            if lines_with(log_path, "before its request body was complete"):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert len(lines_with(log_path, "before its request body was complete")) == 1
    assert len(lines_with(log_path, "Invalid HTTP request")) == 1
    assert lines_with(log_path, "Traceback") == []
    assert lines_with(log_path, " ERROR ") == []


@pytest.mark.parametrize(
    ("times", "admitted"),
    [
        ([0.0], [0]),
        ([0.0, 1.0, 59.9], [0, None, None]),
        ([0.0, 1.0, 2.0, 60.0], [0, None, None, 2]),
        ([0.0, 60.0, 61.0, 120.0], [0, 0, None, 1]),
    ],
)
def test_one_line_per_kind_per_minute_then_a_count(times, admitted):
    throttle = LogThrottle(interval_s=60.0)
    assert [throttle.admit("kind", now=t) for t in times] == admitted
    assert throttle.admit("another kind", now=times[-1]) == 0


def statuses_of(sock: socket.socket, timeout_s: float) -> list[str]:
    """Every status the intake answered on ``sock``, in order, until it closed it."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    sock.close()
    return [m.decode() for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


_BIG_HEADER_POST = (
    b"POST /events HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
    b"Content-Type: application/json\r\nX-Junk: " + b"z" * 9_000 + b"\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


@pytest.mark.parametrize("before", ["pipelined", "after-an-early-answer"])
def test_headers_over_the_cap_are_431_after_another_request_in_the_same_read(tmp_path, before):
    # The cap counted only bytes read while h11 awaited a request line, up to the first blank
    # line of the read: the headers of a request arriving in the same read as the end of the
    # previous one (pipelined, or the body of a request already answered before it was read,
    # as a kept-alive client sends it) went uncounted, and 9 KB of headers were answered 200.
    with intake_process(tmp_path) as (_, url, log_path):
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        if before == "pipelined":
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: intake\r\n\r\n" + _BIG_HEADER_POST)
            expected = ["200", "431"]
        else:
            # Declared over the body limit: answered 413 before its body is read, and the
            # connection is kept; the body then arrives in one read with the next request.
            size = 65 * 1024
            sock.sendall(
                b"POST /events HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(size).encode()
                + b"\r\n\r\n"
            )
            sock.settimeout(10)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 413 "), first
            assert b"connection: close" not in first.lower()
            sock.sendall(b" " * size + _BIG_HEADER_POST)
            expected = ["431"]
        assert statuses_of(sock, timeout_s=10) == expected
    assert len(lines_with(log_path, "request refused (431)")) == 1
