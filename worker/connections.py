"""Opening Redis (a real server, a Sentinel-watched primary, or the embedded one) and the
Dramatiq broker on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

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
SENTINEL_EXAMPLE = (
    "redis+sentinel://[:password@]host:26379,host2:26379/mymaster/0 (user:password@ for an "
    "ACL user, [::1]:26379 for IPv6, ?ssl=true for TLS)"
)
#: ``?ssl=`` values (any case).
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class SentinelAddress:
    """Where a Sentinel-watched Redis is: the sentinels, the name they know the primary by,
    the database, the primary's ACL user and password (the sentinels themselves take none),
    and whether the sentinels and the primary speak TLS."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``redis+sentinel://[[user]:password@]host:port,[::1]:port,host/service[/db][?ssl=true]``
    (port default 26379); raises :class:`~worker.errors.ConfigError` saying what to write,
    never quoting the password.

    The user information is taken off first, up to the last ``@``: a password may hold ``/``,
    ``@`` or ``?`` (percent-encoded or not) without being mistaken for a host or a path."""

    def refuse(why: str) -> ConfigError:
        return ConfigError([f"CRM_REDIS_URL: {why}; write {SENTINEL_EXAMPLE}"])

    rest = url[len(SENTINEL_SCHEME) :]
    username = password = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # ``redis+sentinel://secret@host`` (redis-py's reading): a password
            username, password = None, unquote(user) or None
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    sentinels = []
    for item in hosts.split(","):
        item = item.strip()
        parts = urlsplit(f"//{item}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise refuse(
                f"sentinel {item!r} has no numeric port (or an IPv6 host not in [])"
            ) from None
        if not host:
            raise refuse(f"sentinel {item!r} has no host")
        sentinels.append((host, port if port is not None else DEFAULT_SENTINEL_PORT))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise refuse("the primary's service name (as in `sentinel monitor NAME …`) is missing")
    if db and not db.isdigit():
        raise refuse(f"database {db!r} is not a number")
    ssl = False
    for name, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1].lower()
        if name != "ssl":
            raise refuse(f"option {name!r} is not known (only ssl=true)")
        if value not in _TRUE + _FALSE:
            raise refuse(f"ssl={values[-1]!r} is neither true nor false")
        ssl = value in _TRUE
    return SentinelAddress(tuple(sentinels), service, int(db or 0), password, username, ssl)


def sentinel_client(address: SentinelAddress) -> redis.Redis:
    """A client of the current primary: on a failover its connections fail, and the next
    command asks the sentinels where the primary is now (a demoted primary answering READONLY
    counts as failed too; redis-py's SentinelManagedConnection). With ``ssl`` the sentinels
    and the primary are reached over TLS."""
    tls: dict[str, bool] = {"ssl": True} if address.ssl else {}
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            **tls,
        },
        socket_timeout=SENTINEL_SOCKET_TIMEOUT_S,
        socket_connect_timeout=SENTINEL_SOCKET_TIMEOUT_S,
    )
    primary: dict[str, Any] = {"username": address.username, **tls}
    client: redis.Redis = sentinel.master_for(
        address.service,
        db=address.db,
        password=address.password,
        socket_connect_timeout=SENTINEL_SOCKET_TIMEOUT_S,
        **primary,
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
