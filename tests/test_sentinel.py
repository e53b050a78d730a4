"""Redis Sentinel (``CRM_REDIS_URL=redis+sentinel://…``), done to real processes: a primary, a
replica and a sentinel of our own (``redis-server --sentinel``), ``crm-worker worker`` delivering
to the test SMTP server, and the primary SIGKILLed mid-delivery. The sentinel promotes the
replica, every process finds the new primary through it, and every message arrives; duplicates
stay within the bound of the never-strand faults (2 %, tests/test_healing.py): one per SMTP
connection that was on the wire, plus outcomes a SIGKILLed primary had not yet passed to its
replica."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO, SmtpSink
from tests.faultkit import (
    crm_worker,
    free_port,
    redis_executable,
    wait_until,
    worker_env,
    write_crm,
)
from tests.test_healing import RULE
from worker.connections import parse_sentinel_url, sentinel_client
from worker.errors import ConfigError
from worker.localtime import utc_now
from worker.runtime import Runtime
from worker.settings import load_settings

TOTAL = 1000
DUPLICATES_ALLOWED = TOTAL * 2 // 100
SERVICE = "crm-primary"


def sentinel_command() -> list[str]:
    """``redis-sentinel``, else ``redis-server … --sentinel`` (Debian's package ships only the
    latter's binary under both names)."""
    found = shutil.which("redis-sentinel")
    return [found] if found else [redis_executable(), "--sentinel"]


@dataclass
class Cluster:
    """A primary, a replica and one sentinel (quorum 1) on free loopback ports."""

    folder: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def _redis(self, name: str, port: int, *extra: str) -> None:
        folder = self.folder / name
        folder.mkdir(parents=True)
        self.processes[name] = subprocess.Popen(
            [
                *(redis_executable(), "--port", str(port), "--bind", "127.0.0.1"),
                *("--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec"),
                *("--save", "", *extra),
            ],
            stdout=(folder / "log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        assert wait_until(lambda: _pings(port), timeout_s=20), f"{name} did not start"

    def start(self) -> None:
        self._redis("primary", self.primary_port)
        self._redis(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        replica = redis.Redis(port=self.replica_port)
        assert wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up", timeout_s=20
        )
        config = self.folder / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n",
            encoding="utf-8",
        )
        command = sentinel_command()
        self.processes["sentinel"] = subprocess.Popen(
            [command[0], str(config), *command[1:]],
            stdout=(self.folder / "sentinel.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        sentinel = redis.Redis(port=self.sentinel_port)
        assert wait_until(lambda: self._knows_replica(sentinel), timeout_s=30)

    def _knows_replica(self, sentinel: redis.Redis) -> bool:
        try:
            return bool(sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE))
        except redis.RedisError:
            return False

    def primary(self) -> int:
        sentinel = redis.Redis(port=self.sentinel_port)
        _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "redis")
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:x/m", "no numeric port"),
        ("redis+sentinel://h:26379/", "service name"),
        ("redis+sentinel://h:26379/m/zero", "is not a number"),
        ("redis+sentinel:///m", "has no host"),
    ],
)
def test_a_bad_sentinel_url_says_what_to_write(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sentinel_url(url)
    assert problem in str(caught.value)
    assert "redis+sentinel://[:password@]host:26379,host2:26379/mymaster/0" in str(caught.value)


def test_sentinel_urls_name_every_sentinel_the_service_and_the_database() -> None:
    address = parse_sentinel_url("redis+sentinel://:pw%40x@a:26379,b:26380,c/primary/3")
    assert address.sentinels == (("a", 26379), ("b", 26380), ("c", 26379))
    assert (address.service, address.db, address.password) == ("primary", 3, "pw@x")


def test_the_primary_killed_mid_delivery_every_message_arrives(
    tmp_path: Path, smtp_server: SmtpSink, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    write_crm(tmp_path / "crm", TOTAL, birthday=utc_now().strftime("1990-%m-%d"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "birthday-greeting.yaml").write_text(RULE, encoding="utf-8")
    smtp_server.delay_s["data"] = 0.002  # so that the kill lands mid-delivery
    env = worker_env(
        {
            "CRM_REDIS_URL": cluster.url,
            "CRM_DATA_DIR": str(tmp_path / "var"),
            "CRM_SOURCE": str(tmp_path / "crm"),
            "CRM_RULES_DIR": str(tmp_path / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_MAIL_FROM": "Example Shop <crm@shop.example.com>",
            "CRM_SMTP_HOST": smtp_server.host,
            "CRM_SMTP_PORT": str(smtp_server.port),
            "CRM_SMTP_SECURITY": "none",
            # 2 processes x 4 connections: at most 8 messages on the wire when Redis goes (the
            # never-strand faults' layout), so the 2 % bound has room for the lost writes.
            "CRM_SMTP_CONNECTIONS": "4",
            "CRM_RETRY_BACKOFF_S": "0.2",
            "CRM_SEND_LEASE_S": "3",
            "CRM_CLAIM_DEADLINE_S": "2",
            "CRM_QUEUE_DEADLINE_S": "3",
            "CRM_SWEEP_INTERVAL_S": "0.5",
        }
    )
    runtime = Runtime(load_settings(env))
    worker = crm_worker("worker", "--processes", "2", env=env, cwd=tmp_path)
    try:
        assert cluster.primary() == cluster.primary_port
        assert wait_until(lambda: runtime.redis.zcard("crm:workers") >= 2, timeout_s=30)
        queued = runtime.scheduler.run_pass(utc_now()).queued
        assert len(queued) == TOTAL
        assert wait_until(lambda: len(smtp_server.received) >= TOTAL // 4, timeout_s=60)
        cluster.kill("primary")
        fault_at = time.monotonic()
        assert len(smtp_server.received) < TOTAL, "delivery finished before the fault"
        assert wait_until(lambda: cluster.primary() == cluster.replica_port, timeout_s=30)
        promoted_s = time.monotonic() - fault_at

        assert wait_until(
            lambda: len(set(smtp_server.message_ids())) == TOTAL, timeout_s=120, poll_s=0.2
        ), f"{len(set(smtp_server.message_ids()))} of {TOTAL} arrived"
        healed_s = time.monotonic() - fault_at
        assert wait_until(
            lambda: set(runtime.ledger.states(queued).values()) == {"sent"}, timeout_s=60
        ), Counter(runtime.ledger.states(queued).values())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=40)
        except subprocess.TimeoutExpired:
            worker.kill()
        runtime.close()
    copies = Counter(smtp_server.message_ids())
    duplicates = sum(n - 1 for n in copies.values())
    with capsys.disabled():
        print(
            f"\nSentinel failover (primary SIGKILLed after {TOTAL // 4}+ of {TOTAL}): replica "
            f"promoted {promoted_s:.1f} s after, every message in {healed_s:.1f} s, "
            f"duplicates {duplicates}"
        )
    assert duplicates <= DUPLICATES_ALLOWED


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # The password is taken off first: a "/" in it is not the path.
        ("redis+sentinel://:pa/ss@h1/mymaster", (None, "pa/ss", (("h1", 26379),))),
        ("redis+sentinel://:p@ss?w/rd@h1:1/mymaster", (None, "p@ss?w/rd", (("h1", 1),))),
        ("redis+sentinel://alice:s3cr%2Ft@h1/mymaster", ("alice", "s3cr/t", (("h1", 26379),))),
        ("redis+sentinel://alice:@h1/mymaster", ("alice", "", (("h1", 26379),))),
        ("redis+sentinel://secret@h1/mymaster", (None, "secret", (("h1", 26379),))),
        (
            "redis+sentinel://[::1],[fe80::2]:26380,h3/mymaster",
            (None, None, (("::1", 26379), ("fe80::2", 26380), ("h3", 26379))),
        ),
    ],
)
def test_sentinel_urls_take_the_user_and_password_off_first(
    url: str, expected: tuple[str | None, str | None, tuple[tuple[str, int], ...]]
) -> None:
    address = parse_sentinel_url(url)
    assert (address.username, address.password, address.sentinels) == expected
    assert address.service == "mymaster"
    assert "pa/ss" not in repr(address) and "s3cr" not in repr(address)


def test_ssl_is_an_option_of_the_sentinel_url() -> None:
    assert parse_sentinel_url("redis+sentinel://h/m?ssl=true").ssl
    assert parse_sentinel_url("redis+sentinel://h/m/2?ssl=True").db == 2
    assert not parse_sentinel_url("redis+sentinel://h/m?ssl=false").ssl
    assert not parse_sentinel_url("redis+sentinel://h/m").ssl
    with pytest.raises(ConfigError, match="ssl='maybe' is neither true nor false"):
        parse_sentinel_url("redis+sentinel://h/m?ssl=maybe")
    with pytest.raises(ConfigError, match="option 'timeout' is not known"):
        parse_sentinel_url("redis+sentinel://h/m?timeout=3")


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pa/ss@/mymaster",
        "redis+sentinel://bob:pa/ss@h:x/mymaster",
        "redis+sentinel://:pa/ss@h1/",
        "redis+sentinel://:pa/ss@h1/m/zero",
        "redis+sentinel://:pa/ss@h1/m?ssl=maybe",
    ],
)
def test_a_refused_sentinel_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sentinel_url(url)
    assert "pa/ss" not in str(caught.value) and "ss@" not in str(caught.value)


def test_an_acl_user_reaches_the_primary_through_the_sentinels(cluster: Cluster) -> None:
    primary = redis.Redis(port=cluster.primary_port)
    primary.acl_setuser(
        "crm", enabled=True, passwords=["+s3cr/t@x"], keys=["*"], commands=["+@all"]
    )
    try:
        url = f"redis+sentinel://crm:s3cr/t@x@127.0.0.1:{cluster.sentinel_port}/{SERVICE}/0"
        client = sentinel_client(parse_sentinel_url(url))
        assert client.acl_whoami() == "crm"
        client.close()
    finally:
        primary.acl_deluser("crm")
