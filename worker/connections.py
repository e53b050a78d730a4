"""Opening Redis (a real server, or the embedded one) and the Dramatiq broker on it."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis
from dramatiq.brokers.redis import RedisBroker

from worker.constants import (
    BROKER_HEARTBEAT_TIMEOUT,
    BROKER_MAINTENANCE_CHANCE,
    DRAMATIQ_NAMESPACE,
)
from worker.embedded_redis import EmbeddedRedis
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)


def open_redis(settings: Settings) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """A Redis client: ``CRM_REDIS_URL`` when set, else the embedded Redis whose data file
    lives under ``CRM_DATA_DIR`` and which every local process of the worker shares (returned
    too: :func:`close_redis` leaves it)."""
    if settings.redis_url:
        try:
            return redis.Redis.from_url(settings.redis_url), None
        except ValueError as exc:
            raise ConfigError([f"CRM_REDIS_URL: {exc}"]) from None
    embedded = EmbeddedRedis(settings.data_dir)
    return embedded.open(), embedded


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
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        return f"redis at {parts.hostname or parts.path}" + (f":{parts.port}" if parts.port else "")
    return f"embedded redis ({settings.data_dir / 'redis.db'})"
