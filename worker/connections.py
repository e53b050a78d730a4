"""Opening Redis (a real server, a Sentinel-watched primary, or the embedded one) and the
Dramatiq broker on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
from dramatiq.brokers.redis import RedisBroker
from redis.sentinel import Sentinel

from worker.constants import (
    BROKER_HEARTBEAT_TIMEOUT,
    BROKER_MAINTENANCE_CHANCE,
    DEFAULT_SENTINEL_PORT,
    DRAMATIQ_NAMESPACE,
    SENTINEL_SOCKET_TIMEOUT_S,
)
from worker.embedded_redis import EmbeddedRedis
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)


def open_redis(settings: Settings) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """A Redis client: ``CRM_REDIS_URL`` when set, else the embedded Redis whose data file
    lives under ``CRM_DATA_DIR`` and which every local process of the worker shares (returned
    too: :func:`close_redis` leaves it)."""
    if settings.redis_url and settings.redis_url.startswith(SENTINEL_SCHEME):
        return sentinel_client(parse_sentinel_url(settings.redis_url)), None
    if settings.redis_url:
        try:
            return redis.Redis.from_url(settings.redis_url), None
        except ValueError as exc:
            raise ConfigError([f"CRM_REDIS_URL: {exc}"]) from None
    embedded = EmbeddedRedis(settings.data_dir)
    return embedded.open(), embedded


SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_EXAMPLE = "redis+sentinel://[:password@]host:26379,host2:26379/mymaster/0"


@dataclass(frozen=True)
class SentinelAddress:
    """Where a Sentinel-watched Redis is: the sentinels, the name they know the primary by,
    the database, and the primary's password (the sentinels themselves take none)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``redis+sentinel://[:password@]host:port,host2:port/service[/db]`` (port default
    26379); raises :class:`~worker.errors.ConfigError` saying what to write."""

    def refuse(why: str) -> ConfigError:
        return ConfigError([f"CRM_REDIS_URL: {why}; write {SENTINEL_EXAMPLE}"])

    rest = url[len(SENTINEL_SCHEME) :]
    hosts, _, path = rest.partition("/")
    password = None
    if "@" in hosts:
        userinfo, _, hosts = hosts.rpartition("@")
        password = unquote(userinfo.partition(":")[2] or userinfo) or None
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = (host if colon else item).strip().strip("[]")
        if not host:
            raise refuse(f"sentinel {item!r} has no host")
        try:
            number = int(port) if colon else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise refuse(f"sentinel {item!r} has no numeric port") from None
        sentinels.append((host, number))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise refuse("the primary's service name (as in `sentinel monitor NAME …`) is missing")
    if db and not db.isdigit():
        raise refuse(f"database {db!r} is not a number")
    return SentinelAddress(tuple(sentinels), service, int(db or 0), password)


def sentinel_client(address: SentinelAddress) -> redis.Redis:
    """A client of the current primary: on a failover its connections fail, and the next
    command asks the sentinels where the primary is now (a demoted primary answering READONLY
    counts as failed too; redis-py's SentinelManagedConnection)."""
    sentinel = Sentinel(
        list(address.sentinels),
        socket_timeout=SENTINEL_SOCKET_TIMEOUT_S,
        socket_connect_timeout=SENTINEL_SOCKET_TIMEOUT_S,
    )
    client: redis.Redis = sentinel.master_for(
        address.service,
        db=address.db,
        password=address.password,
        socket_connect_timeout=SENTINEL_SOCKET_TIMEOUT_S,
    )
    return client


def close_redis(client: redis.Redis, embedded: EmbeddedRedis | None) -> None:
    """Close our connections; the embedded Redis is stopped (its data written out) unless
    another local process of the worker still uses it."""
    client.connection_pool.disconnect()
    if embedded is not None:
        embedded.close()


def make_broker(
    client: redis.Redis,
    *,
    heartbeat_timeout_s: float = BROKER_HEARTBEAT_TIMEOUT.total_seconds(),
    maintenance_chance: int = BROKER_MAINTENANCE_CHANCE,
) -> RedisBroker:
    """Dramatiq's Redis broker on ``client``, with its keys under our namespace.

    A worker silent for ``heartbeat_timeout_s`` counts as dead; its unacknowledged messages are
    requeued by the broker's maintenance, which runs on ``maintenance_chance`` in a million
    broker commands (FACTS.md: Dramatiq's defaults, 60 s and 1,000, can leave a killed worker's
    batch waiting for minutes on a quiet queue)."""
    return RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        namespace=DRAMATIQ_NAMESPACE,
        heartbeat_timeout=int(heartbeat_timeout_s * 1000),
        maintenance_chance=maintenance_chance,
    )


def describe_redis(settings: Settings) -> str:
    """Where Redis is, for humans (never the password)."""
    if settings.redis_url and settings.redis_url.startswith(SENTINEL_SCHEME):
        address = parse_sentinel_url(settings.redis_url)
        where = ",".join(f"{host}:{port}" for host, port in address.sentinels)
        return f"redis primary {address.service!r} via sentinels {where}"
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        return f"redis at {parts.hostname or parts.path}" + (f":{parts.port}" if parts.port else "")
    return f"embedded redis ({settings.data_dir / 'redis.db'})"
