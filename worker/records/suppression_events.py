"""Suppression events for the CRM: what changed on the suppression list, kept until posted.

Every change to the suppression list (:mod:`worker.records.suppression`) can become an event
that the CRM is told about (``CRM_CRM_EVENTS_URL``). The event is written to an outbox (a Redis
stream, :data:`~worker.constants.SUPPRESSION_EVENTS_KEY`) in the same Lua call as the change
itself, so there is never a change without its event nor an event without its change, whatever
crashes. :mod:`worker.delivery.crm_events` posts the outbox, oldest first; an entry leaves only
after the CRM answered 2xx.

The body of each event is fixed when it is written, so every retry posts the same bytes with
the same ``id`` (the CRM drops a repeat by its id)::

    {"id": "5f0c…", "type": "customer.unsubscribed", "address": "ana@example.com",
     "scope": "marketing", "reason": "unsubscribed (one-click)", "source": "one-click",
     "at": "2026-03-14T09:31:02Z", "delivery": null}

Example::

    >>> outbox = SuppressionOutbox(client)                     # doctest: +SKIP
    >>> [event.type for event in outbox.pending(10)]
    ['customer.unsubscribed', 'address.bounced']
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.constants import (
    SUPPRESSION_EVENTS_KEY,
    SUPPRESSION_EVENTS_LOCK_KEY,
    SUPPRESSION_EVENTS_RETRY_KEY,
)

#: Event types. An address left marketing mail (one-click, a mailto unsubscribe) …
UNSUBSCRIBED = "customer.unsubscribed"
#: … came back to it (the way back on the unsubscribe page, within a day).
RESUBSCRIBED = "customer.resubscribed"
#: A relay or a delivery status notification said the address does not exist (or is full).
BOUNCED = "address.bounced"
#: The recipient marked our mail as spam (an ARF report from a feedback loop).
COMPLAINED = "address.complained"
#: An operator added (``crm-worker suppress add``) or removed (``suppress remove``) it.
SUPPRESSED = "address.suppressed"
UNSUPPRESSED = "address.unsuppressed"
EVENT_TYPES = frozenset({UNSUBSCRIBED, RESUBSCRIBED, BOUNCED, COMPLAINED, SUPPRESSED, UNSUPPRESSED})

#: Where a change came from.
ONE_CLICK = "one-click"
MAILBOX = "mailbox"
SMTP = "smtp"
OPERATOR = "operator"
SOURCES = frozenset({ONE_CLICK, MAILBOX, SMTP, OPERATOR})


def event_body(
    event_type: str,
    address: str,
    *,
    scope: str,
    reason: str,
    source: str,
    at: datetime,
    delivery: str = "",
) -> str:
    """The JSON body of one event, with a new random ``id``."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown suppression event type {event_type!r}")
    if source not in SOURCES:
        raise ValueError(f"unknown suppression event source {source!r}")
    stamp = at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": event_type,
            "address": address,
            "scope": scope,
            "reason": reason,
            "source": source,
            "at": stamp,
            "delivery": delivery or None,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class PendingEvent:
    """One event in the outbox: its stream entry, its id and type, and the body to post."""

    entry: str
    id: str
    type: str
    body: bytes


@dataclass(frozen=True)
class RetryState:
    """How often posting has failed in a row, and when to try again (None: now)."""

    attempts: int = 0
    next_at: datetime | None = None


# Renew or release the posting lock only while this process still holds it.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SuppressionOutbox:
    """The suppression events not yet taken by the CRM, and the state of posting them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def pending(self, limit: int) -> list[PendingEvent]:
        """The oldest ``limit`` events, oldest first."""
        raw: Any = self.client.xrange(SUPPRESSION_EVENTS_KEY, count=limit)
        return [_pending(_text(entry), fields) for entry, fields in raw]

    def delivered(self, event: PendingEvent) -> None:
        """The CRM took ``event``: it leaves the outbox, and the next failure starts afresh."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xdel(SUPPRESSION_EVENTS_KEY, event.entry)
            pipe.delete(SUPPRESSION_EVENTS_RETRY_KEY)
            pipe.execute()

    def failed(self, *, next_at: datetime) -> int:
        """Posting failed: try again at ``next_at``; how many times it has failed in a row."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(SUPPRESSION_EVENTS_RETRY_KEY, "attempts", 1)
            pipe.hset(SUPPRESSION_EVENTS_RETRY_KEY, "next_at", str(next_at.timestamp()))
            result: list[Any] = pipe.execute()
        return int(result[0])

    def retry_state(self) -> RetryState:
        raw: dict[Any, Any] = self.client.hgetall(SUPPRESSION_EVENTS_RETRY_KEY)
        state = {_text(k): _text(v) for k, v in raw.items()}
        next_at = state.get("next_at")
        return RetryState(
            int(state.get("attempts", 0)),
            datetime.fromtimestamp(float(next_at), UTC) if next_at else None,
        )

    def lock(self, token: str, ttl_ms: int) -> bool:
        """Take the posting lock for ``ttl_ms`` (False: another process posts right now)."""
        return bool(self.client.set(SUPPRESSION_EVENTS_LOCK_KEY, token, nx=True, px=ttl_ms))

    def hold(self, token: str, ttl_ms: int) -> bool:
        """Keep the lock another ``ttl_ms``; False when it was lost (expired, taken over)."""
        return bool(self._hold(keys=[SUPPRESSION_EVENTS_LOCK_KEY], args=[token, ttl_ms]))

    def unlock(self, token: str) -> None:
        self._release(keys=[SUPPRESSION_EVENTS_LOCK_KEY], args=[token])

    def __len__(self) -> int:
        return int(self.client.xlen(SUPPRESSION_EVENTS_KEY))


def _pending(entry: str, fields: dict[Any, Any]) -> PendingEvent:
    raw = fields.get(b"event", fields.get("event", b""))
    body = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    try:
        data = json.loads(body)
        event_id, event_type = str(data["id"]), str(data["type"])
    except (ValueError, KeyError, TypeError):
        # Not written by this module: posted as it is, under its stream id, for the CRM to see.
        event_id, event_type = entry, ""
    return PendingEvent(entry, event_id, event_type, body)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
