"""The suppression list: addresses that must never get mail again, kept in Redis.

A hash (``SUPPRESSION_KEY``) maps the lower-cased address to why and when it was added. The
worker adds an address when a relay says it does not exist (5.1.x, 5.2.1; see
:mod:`worker.channels.replies`); a 5.7.x reply is our own problem and never lands here. Every
delivery checks the list right before sending, so an address suppressed after a message was
queued is still skipped. Operators manage it with ``crm-worker suppress list|add|remove``.

Each entry has a scope: ``all`` (a bounce, a complaint, an operator: no mail at all) or
``marketing`` (the recipient unsubscribed: no marketing mail, while service mail such as a
complaint follow-up still goes out).

With ``announce=True`` (``CRM_CRM_EVENTS_URL`` set) every change is also an event for the CRM
(:mod:`worker.records.suppression_events`), written in the same Lua call as the change: a crash
or a Redis restart never keeps one without the other. Writing the same entry again (a mail
provider repeating a one-click request, a second bounce with the same reason) is no change and
no event.

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

from worker.constants import SUPPRESSION_EVENTS_KEY, SUPPRESSION_KEY
from worker.localtime import utc_now
from worker.records.suppression_events import (
    MAILBOX,
    OPERATOR,
    SMTP,
    SUPPRESSED,
    UNSUPPRESSED,
    event_body,
)


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


# KEYS: the suppression hash, the event stream. ARGV: address, entry JSON, scope, reason, event
# JSON ('' for none). Returns 0: kept as it was (an unsubscribe never narrows a bounce to
# marketing), 1: changed (and the event written), 2: the same scope and reason written again.
_ADD = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local result = 1
if old then
  local scope, reason = 'all', ''
  local ok, entry = pcall(cjson.decode, old)
  if ok and type(entry) == 'table' then
    if type(entry.scope) == 'string' then scope = entry.scope end
    if type(entry.reason) == 'string' then reason = entry.reason end
  end
  if ARGV[3] == 'marketing' and scope == 'all' then return 0 end
  if scope == ARGV[3] and reason == ARGV[4] then result = 2 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if result == 1 and ARGV[5] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'event', ARGV[5])
end
return result
"""

# KEYS: as above. ARGV: address, the entry as it was read, event JSON ('' for none). Returns 1:
# removed, 0: not suppressed, -1: the entry changed since it was read (read it again).
_REMOVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
if old ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'event', ARGV[3])
end
return 1
"""


class SuppressionList:
    """Suppressed addresses in Redis, shared by every worker; with ``announce``, each change is
    also written to the CRM's event outbox."""

    def __init__(self, client: redis.Redis, *, announce: bool = False) -> None:
        self.client = client
        self.announce = announce
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)

    def add(
        self,
        address: str,
        reason: str,
        *,
        now: datetime,
        key: str = "",
        scope: str = ALL,
        event: str = SUPPRESSED,
        source: str = OPERATOR,
    ) -> bool:
        """Never send to ``address`` again (``scope`` ``marketing``: no marketing mail); replaces
        an earlier entry, except that an unsubscribe never narrows a bounce to marketing.

        ``event`` and ``source`` say what the CRM is told (with ``announce``). True when the
        list changed; False when the entry was kept or written again unchanged."""
        if scope not in SCOPES:
            raise ValueError(f"unknown suppression scope {scope!r}")
        entry = {"reason": reason, "at": now.timestamp(), "key": key, "scope": scope}
        body = ""
        if self.announce:
            # The delivery a bounce is about; a one-click or an operator names none.
            delivery = key if source in (SMTP, MAILBOX) else ""
            body = event_body(
                event, _address(address), scope=scope, reason=reason, source=source, at=now,
                delivery=delivery,
            )  # fmt: skip
        result = self._add(
            keys=[SUPPRESSION_KEY, SUPPRESSION_EVENTS_KEY],
            args=[_address(address), json.dumps(entry), scope, reason, body],
        )
        return int(result) == 1

    def remove(
        self,
        address: str,
        *,
        reason: str = "removed by an operator",
        event: str = UNSUPPRESSED,
        source: str = OPERATOR,
        now: datetime | None = None,
    ) -> bool:
        """Allow ``address`` again; False when it was not suppressed. ``reason``, ``event`` and
        ``source`` say what the CRM is told (with ``announce``)."""
        while True:
            raw: Any = self.client.hget(SUPPRESSION_KEY, _address(address))
            if raw is None:
                return False
            body = ""
            if self.announce:
                scope = _entry(_address(address), raw).scope
                body = event_body(
                    event, _address(address), scope=scope, reason=reason, source=source,
                    at=now or utc_now(),
                )  # fmt: skip
            result = int(
                self._remove(
                    keys=[SUPPRESSION_KEY, SUPPRESSION_EVENTS_KEY],
                    args=[_address(address), raw, body],
                )
            )
            if result >= 0:
                return result == 1

    def entry(self, address: str) -> Suppressed | None:
        """The entry of ``address``, or ``None`` when it is not suppressed."""
        raw: Any = self.client.hget(SUPPRESSION_KEY, _address(address))
        return None if raw is None else _entry(_address(address), raw)

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
