"""Work in progress: the deliveries that are not final yet, by state, with the oldest age of
each and how many are past their deadline (``crm-worker report`` and ``status``, Prometheus).

Read from the ledger's deadline index, which holds exactly the non-final deliveries, oldest
deadline first; a delivery past its deadline by more than the grace (the sweeper should have
taken it over by then) is *stuck*: something is wrong that the sweeper does not heal (no worker
runs, Redis refuses writes, a bug), and an operator should look.

Example::

    >>> backlog = read_backlog(client, now=time.time(), grace_s=20)      # doctest: +SKIP
    >>> backlog.states["queued"].count, backlog.stuck
    (12, 0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.constants import BACKLOG_READ_LIMIT, DEADLINE_INDEX_KEY, LEDGER_KEY_PREFIX

#: Non-final ledger states in the order of a delivery's life, with the name operators see.
STATE_NAMES = {
    "claimed": "planned",
    "queued": "queued",
    "sending": "sending",
    "retrying": "retrying",
}


@dataclass(frozen=True)
class Pending:
    """One non-final delivery: its ledger ``state``, since when (unix seconds; ``None`` for an
    entry written before the field existed) and its deadline."""

    key: str
    state: str
    since: float | None
    deadline: float


@dataclass
class StateFigures:
    """The deliveries in one state: how many, since when the oldest, how many are stuck."""

    count: int = 0
    oldest_since: float | None = None
    stuck: int = 0


@dataclass
class Backlog:
    """Every non-final delivery at ``now``, by operator-facing state name."""

    now: float
    states: dict[str, StateFigures] = field(
        default_factory=lambda: {name: StateFigures() for name in STATE_NAMES.values()}
    )
    #: All non-final deliveries (also those beyond the read limit).
    total: int = 0
    #: Deliveries past their deadline by more than the grace (exact, also beyond the limit).
    stuck: int = 0
    #: Deliveries looked at one by one (the oldest deadlines first, at most the limit).
    read: int = 0

    def oldest_age_s(self, name: str) -> float | None:
        """Seconds since the oldest delivery of state ``name`` entered it."""
        since = self.states[name].oldest_since
        return None if since is None else max(self.now - since, 0.0)


def summarize_pending(
    items: Iterable[Pending], *, now: float, grace_s: float, total: int, stuck: int
) -> Backlog:
    """Figures per state of ``items`` (pure: the I/O is :func:`read_backlog`)."""
    backlog = Backlog(now=now, total=total, stuck=stuck)
    for item in items:
        name = STATE_NAMES.get(item.state)
        if name is None:
            continue  # final by now: left the index since it was read
        figures = backlog.states[name]
        figures.count += 1
        backlog.read += 1
        if item.since is not None and (
            figures.oldest_since is None or item.since < figures.oldest_since
        ):
            figures.oldest_since = item.since
        if item.deadline < now - grace_s:
            figures.stuck += 1
    return backlog


def read_backlog(
    client: redis.Redis, *, now: float, grace_s: float, limit: int = BACKLOG_READ_LIMIT
) -> Backlog:
    """The backlog in Redis at ``now`` (unix seconds); ``grace_s``: how far past its deadline a
    delivery may be before it counts as stuck (the sweeper runs every few seconds)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(DEADLINE_INDEX_KEY)
        pipe.zcount(DEADLINE_INDEX_KEY, "-inf", now - grace_s)
        pipe.zrange(DEADLINE_INDEX_KEY, 0, limit - 1, withscores=True)
        total, stuck, oldest = pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        for member, _ in oldest:
            pipe.hmget(member, "state", "since")
        fields = pipe.execute()
    items = [
        Pending(_text(member)[len(LEDGER_KEY_PREFIX) :], _text(state or b""), _float(since), score)
        for (member, score), (state, since) in zip(oldest, fields, strict=True)
    ]
    return summarize_pending(items, now=now, grace_s=grace_s, total=int(total), stuck=int(stuck))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    try:
        return float(_text(value)) if value is not None else None
    except ValueError:
        return None
