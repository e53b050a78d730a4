"""Heartbeats of the long-running processes, and whether a role is alive on a host.

Each scheduler, worker process and intake writes ``host:pid`` with the time into its role's
sorted set (``crm:schedulers``, ``crm:workers``, ``crm:intakes``): workers at each sweep,
schedulers and intakes every ``HEARTBEAT_INTERVAL``. ``crm-worker health ROLE`` asks whether a
process of that role on this host (a container's hostname is its own) beat recently; Docker
and Kubernetes run it as the health check.

Example::

    >>> beat(client, "scheduler", "web-1:42", now=1_000.0)                # doctest: +SKIP
    >>> check_health(client, "scheduler", host="web-1", fresh_s=30, now=1_010.0)
    Health(ok=True, reason='scheduler web-1:42 beat 10 s ago')
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Literal

import redis

from worker.constants import (
    INTAKES_KEY,
    SCHEDULERS_KEY,
    WORKER_HEARTBEAT_KEPT,
    WORKERS_KEY,
)

Role = Literal["scheduler", "worker", "intake"]
ROLES: tuple[Role, ...] = ("scheduler", "worker", "intake")
HEARTBEAT_KEYS: dict[Role, str] = {
    "scheduler": SCHEDULERS_KEY,
    "worker": WORKERS_KEY,
    "intake": INTAKES_KEY,
}


def process_name() -> str:
    """How a process appears in the heartbeats: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(client: redis.Redis, role: Role, name: str, *, now: float) -> None:
    """Record that process ``name`` of ``role`` is alive at ``now`` (unix seconds), and forget
    processes gone for a day."""
    key = HEARTBEAT_KEYS[role]
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {name: now})
        pipe.zremrangebyscore(key, "-inf", now - WORKER_HEARTBEAT_KEPT.total_seconds())
        pipe.execute()


def leave(client: redis.Redis, role: Role, name: str) -> None:
    """Process ``name`` stops: gone from the heartbeats at once (best effort)."""
    with contextlib.suppress(redis.RedisError):
        client.zrem(HEARTBEAT_KEYS[role], name)


@dataclass(frozen=True)
class Health:
    """The answer of a health check: ``ok``, and one line saying why."""

    ok: bool
    reason: str


def check_health(
    client: redis.Redis, role: Role, *, host: str | None, fresh_s: float, now: float
) -> Health:
    """Whether a process of ``role`` on ``host`` (None: on any host) beat within ``fresh_s``.

    Raises ``redis.RedisError`` when Redis cannot be asked."""
    beats = client.zrange(HEARTBEAT_KEYS[role], 0, -1, withscores=True)
    mine = [(_text(item[0]), float(item[1])) for item in beats]
    if host is not None:
        mine = [(name, score) for name, score in mine if name.rpartition(":")[0] == host]
    where = f"on {host}" if host is not None else "on any host"
    if not mine:
        return Health(False, f"no {role} {where} has ever written a heartbeat")
    name, last = max(mine, key=lambda item: item[1])
    age_s = max(now - last, 0.0)
    if age_s > fresh_s:
        return Health(
            False,
            f"no {role} {where} beat in the last {fresh_s:.0f} s (the latest, {name}, "
            f"{age_s:.0f} s ago)",
        )
    return Health(True, f"{role} {name} beat {age_s:.0f} s ago")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
