"""The suppression list: addresses that must never get mail again, kept in Redis.

A hash (``SUPPRESSION_KEY``) maps the lower-cased address to why and when it was added. The
worker adds an address when a relay says it does not exist (5.1.x, 5.2.1; see
:mod:`worker.channels.replies`); a 5.7.x reply is our own problem and never lands here. Every
delivery checks the list right before sending, so an address suppressed after a message was
queued is still skipped. Operators manage it with ``crm-worker suppress list|add|remove``.

Each entry has a scope: ``all`` (a bounce, a complaint, an operator: no mail at all) or
``marketing`` (the recipient unsubscribed: no marketing mail, while service mail such as a
complaint follow-up still goes out).

Example::

    >>> suppression = SuppressionList(client)             # doctest: +SKIP
    >>> suppression.add("Gone@Example.com", "550 5.1.1 user unknown", now=now)
    >>> suppression.reason("gone@example.com")
    '550 5.1.1 user unknown'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.constants import SUPPRESSION_KEY


@dataclass(frozen=True)
class Suppressed:
    """One suppressed address: why (``reason``), since when (``at``), and which delivery
    (``key``, empty when added by hand)."""

    address: str
    reason: str
    at: datetime
    key: str = ""
    scope: str = "all"

    def stops(self, *, marketing: bool) -> bool:
        """Does this entry stop a marketing (or a service) message?"""
        return marketing or self.scope == ALL


#: Suppression scopes: every message, or marketing messages only (an unsubscribe).
ALL = "all"
MARKETING_ONLY = "marketing"
SCOPES = frozenset({ALL, MARKETING_ONLY})


def _address(address: str) -> str:
    return address.strip().lower()


class SuppressionList:
    """Suppressed addresses in Redis, shared by every worker."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(
        self, address: str, reason: str, *, now: datetime, key: str = "", scope: str = ALL
    ) -> None:
        """Never send to ``address`` again (``scope`` ``marketing``: no marketing mail); replaces
        an earlier entry, except that an unsubscribe never narrows a bounce to marketing."""
        if scope not in SCOPES:
            raise ValueError(f"unknown suppression scope {scope!r}")
        if scope == MARKETING_ONLY:
            earlier = self.entry(address)
            if earlier is not None and earlier.scope == ALL:
                return
        entry = {"reason": reason, "at": now.timestamp(), "key": key, "scope": scope}
        self.client.hset(SUPPRESSION_KEY, _address(address), json.dumps(entry))

    def entry(self, address: str) -> Suppressed | None:
        """The entry of ``address``, or ``None`` when it is not suppressed."""
        raw: Any = self.client.hget(SUPPRESSION_KEY, _address(address))
        return None if raw is None else _entry(_address(address), raw)

    def remove(self, address: str) -> bool:
        """Allow ``address`` again; False when it was not suppressed."""
        return bool(self.client.hdel(SUPPRESSION_KEY, _address(address)))

    def reason(self, address: str, *, marketing: bool = True) -> str | None:
        """Why a message to ``address`` (marketing, or service with ``marketing=False``) must
        not go out, or ``None`` when it may."""
        found = self.entry(address)
        return found.reason if found is not None and found.stops(marketing=marketing) else None

    def entries(self, addresses: Iterable[str]) -> dict[str, Suppressed]:
        """The entries of the suppressed ones of ``addresses``, in one round trip."""
        wanted = list(dict.fromkeys(addresses))
        if not wanted:
            return {}
        raw: list[Any] = self.client.hmget(SUPPRESSION_KEY, [_address(a) for a in wanted])
        return {
            address: _entry(_address(address), value)
            for address, value in zip(wanted, raw, strict=True)
            if value is not None
        }

    def reasons(self, addresses: Iterable[str], *, marketing: bool = True) -> dict[str, str]:
        """:meth:`reason` for many addresses in one round trip: the stopped ones only."""
        found = self.entries(addresses).items()
        return {a: e.reason for a, e in found if e.stops(marketing=marketing)}

    def __iter__(self) -> Iterator[Suppressed]:
        """Every suppressed address, oldest first."""
        raw: dict[Any, Any] = self.client.hgetall(SUPPRESSION_KEY)
        entries = [_entry(_text(a), v) for a, v in raw.items()]
        return iter(sorted(entries, key=lambda e: (e.at, e.address)))

    def __len__(self) -> int:
        return int(self.client.hlen(SUPPRESSION_KEY))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(address: str, raw: Any) -> Suppressed:
    data = json.loads(_text(raw))
    at = datetime.fromtimestamp(float(data.get("at", 0)), UTC)
    scope = str(data.get("scope", ALL))  # entries written before scopes stop everything
    return Suppressed(address, str(data.get("reason", "")), at, str(data.get("key", "")), scope)
