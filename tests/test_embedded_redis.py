"""The embedded Redis (no CRM_REDIS_URL) shared by several processes: one redis-server per data
file, started by the first process, joined by the others, stopped by the last one out; an
orphaned server is reused, never duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SmtpSink
from tests.faultkit import NOW, crm_worker, free_port, wait_until, worker_env, write_crm
from worker.embedded_redis import EmbeddedRedis, server_answers


def server_pid(data_dir: Path) -> int | None:
    """The pid of the redis-server serving ``data_dir`` (None when none is recorded)."""
    state = data_dir / "redis.db.server"
    if not state.exists():
        return None
    return int(json.loads(state.read_text(encoding="utf-8"))["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet collected by its parent) is not a running server.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ", 1)[1][0] != "Z"


@pytest.fixture(autouse=True)
def no_server_left_behind(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its redis-server running for ever."""
    yield
    pid = server_pid(tmp_path / "var")
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def embedded_env(tmp_path: Path, smtp: SmtpSink) -> dict[str, str]:
    return worker_env(
        {
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
            "CRM_SMTP_HOST": smtp.host,
            "CRM_SMTP_PORT": str(smtp.port),
            "CRM_SMTP_SECURITY": "none",
        }
    )


def test_two_run_once_on_the_embedded_redis_share_one_server_and_send_once(tmp_path, smtp_server):
    total = 150
    write_crm(tmp_path / "crm", total)
    env = embedded_env(tmp_path, smtp_server)
    now = NOW.isoformat()
    runs = [crm_worker("run", "--once", "--now", now, env=env, cwd=tmp_path) for _ in range(2)]
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    received = Counter(smtp_server.message_ids())
    assert len(received) == total and set(received.values()) == {1}
    # The last one out stopped the server: nothing is left running on the data file.
    assert server_pid(tmp_path / "var") is None
    assert not EmbeddedRedis(tmp_path / "var").socket_path.exists() or not _answers(tmp_path)


def _answers(tmp_path: Path) -> bool:
    return server_answers(EmbeddedRedis(tmp_path / "var").socket_path)


def test_an_orphaned_server_is_reused_and_the_last_one_out_stops_it(tmp_path):
    data_dir = tmp_path / "var"
    # A process that starts the server and is SIGKILLed: the server lives on, orphaned.
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from worker.embedded_redis import EmbeddedRedis, server_answers; "
            "EmbeddedRedis(Path(sys.argv[1])).open().set('left', 'behind'); "
            "print('up', flush=True); time.sleep(60)",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert starter.stdout is not None and starter.stdout.readline() == b"up\n"
        orphan = server_pid(data_dir)
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
    finally:
        starter.kill()
    assert orphan is not None and alive(orphan)

    first, second = EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)
    client = first.open()
    second.open()
    assert client.get("left") == b"behind"
    assert server_pid(data_dir) == orphan  # reused, not a second server on the same file
    first.close()
    assert alive(orphan)  # the second still uses it
    second.close()
    assert wait_until(lambda: not alive(orphan), timeout_s=30)
    assert server_pid(data_dir) is None


@pytest.mark.parametrize("role", ["intake"])
def test_intake_stopped_by_sigterm_leaves_no_redis_server(tmp_path, smtp_server, role):
    env = embedded_env(tmp_path, smtp_server)
    env["CRM_INTAKE_ALLOW_UNAUTHENTICATED"] = "true"
    port = free_port()
    intake = crm_worker(role, "--port", str(port), env=env, cwd=tmp_path)
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        assert wait_until(healthy, timeout_s=60, poll_s=0.1)
        pid = server_pid(tmp_path / "var")
        assert pid is not None and alive(pid)
        intake.send_signal(signal.SIGTERM)
        assert intake.wait(timeout=30) == 0
    finally:
        intake.kill()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_a_server_that_refuses_to_stop_keeps_serving_and_is_joined_not_doubled(
    tmp_path: Path,
) -> None:
    """Redis refuses SHUTDOWN when it cannot write its data (here: its directory is gone). The
    last process out then leaves it running and says so, and the next process joins it: never
    a second server on the same data file."""
    import shutil

    first = EmbeddedRedis(tmp_path / "var")
    client = first.open()
    client.set("kept", "1")
    client.config_set("save", "3600 1")  # a save point: SHUTDOWN must write, and cannot
    gone = tmp_path / "gone"
    gone.mkdir()
    client.config_set("dir", str(gone))
    shutil.rmtree(gone)
    pid = server_pid(tmp_path / "var")
    try:
        first.close()
        assert pid is not None and alive(pid)
        second = EmbeddedRedis(tmp_path / "var")
        assert second.open().get("kept") == b"1"
        assert server_pid(tmp_path / "var") == pid  # joined, not a second server
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
