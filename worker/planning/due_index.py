"""The due-index: deliveries planned ahead, in Redis, sorted by the instant they fall due.

Three keys (:mod:`worker.constants`):

* ``DUE_INDEX_KEY``, a sorted set: member a delivery key (``rule:entity:id:tag/action``,
  which names the rule, the record and the occurrence: all a claim needs), score its due
  instant in unix seconds;
* ``DUE_INDEX_RECORDS_KEY``, a hash: ``entity:id`` → the members that record was given, so a
  changed or deleted record's entries are removed before its new ones go in;
* ``DUE_INDEX_STATE_KEY``, a hash: how far the plan reaches, which rules it was made for and
  each entity's change watermark.

The index is only a plan. A member that falls due is checked against the CRM's fresh data
(:mod:`worker.planning.ahead`) and then claimed in the ledger by its key, exactly as a full
pass claims it: a member planned twice, or planned for a record that changed since, is never
sent twice nor sent wrongly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.constants import (
    DIRTY_OVERFLOW_KEY,
    DIRTY_RECORDS_KEY,
    DIRTY_TAKEN_KEY,
    DUE_INDEX_BUILDING_TTL,
    DUE_INDEX_CHUNK,
    DUE_INDEX_KEY,
    DUE_INDEX_RECORDS_KEY,
    DUE_INDEX_STATE_KEY,
    MAX_DIRTY_RECORDS,
    SCHEDULER_LOCK_KEY,
)

_BUILDING = ":building:"
_WATERMARK = "watermark:"


@dataclass(frozen=True)
class Entry:
    """One planned delivery: its key, the record it is about (``entity:id``), when it is due."""

    key: str
    record: str
    due_at: datetime


@dataclass(frozen=True)
class PlanState:
    """What the index was planned for: up to ``horizon_end``, for rules ``fingerprint``,
    with the CRM read up to each entity's watermark."""

    horizon_end: datetime | None
    fingerprint: str
    watermarks: Mapping[str, str]
    #: More records were named dirty than the set keeps: only a full pass is right.
    overflow: bool = False


def record_ref(entity: str, record_id: str) -> str:
    """``customer:42``: how the index and the dirty set name a record."""
    return f"{entity}:{record_id}"


# KEYS: the leader lock, the index, its records, its state, the index and records built aside.
# ARGV: the lock token the pass holds ('' when no lock is held: a one-off pass), then the
# state's fields and values. Nothing is written unless the lock is still this pass's.
_SWAP = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('DEL', KEYS[5], KEYS[6])
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('RENAME', KEYS[5], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('RENAME', KEYS[6], KEYS[3])
  redis.call('PERSIST', KEYS[3])
end
redis.call('HSET', KEYS[4], unpack(ARGV, 2))
return 1
"""

# KEYS: the dirty set, the taken set, the overflow flag. ARGV: '1' to clear the flag too (a
# full pass: what overflowed before it started is in its plan). Returns the records taken.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
  redis.call('DEL', KEYS[1])
end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[3])
end
return redis.call('SMEMBERS', KEYS[2])
"""

# KEYS: the plan's state, the dirty set, the overflow flag. ARGV: the record, the limit.
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], '1')
  return 0
end
return redis.call('SADD', KEYS[2], ARGV[1])
"""

# KEYS: the leader lock, the state. ARGV: the lock token ('' : none), then fields and values.
_SAVE_MARKS = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""


class DueIndex:
    """Reads and writes the due-index; see the module docstring.

    ``leader`` (the scheduler's lock token, :class:`worker.planning.scheduler.LeaderLock`)
    makes the full plan's swap and the watermarks' save conditional on the lock still being
    that token's: a scheduler that stalled and lost the lock cannot overwrite the plan of the
    one that took over."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._swap = client.register_script(_SWAP)
        self._save_marks = client.register_script(_SAVE_MARKS)
        self._take = client.register_script(_TAKE)

    # -- the plan's state ---------------------------------------------------------------------

    def state(self) -> PlanState:
        raw: Mapping[Any, Any] = self.client.hgetall(DUE_INDEX_STATE_KEY)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        end = fields.get("horizon_end")
        return PlanState(
            horizon_end=datetime.fromtimestamp(float(end), UTC) if end else None,
            fingerprint=fields.get("fingerprint", ""),
            watermarks={
                k.removeprefix(_WATERMARK): v for k, v in fields.items() if k.startswith(_WATERMARK)
            },
            overflow=bool(self.client.exists(DIRTY_OVERFLOW_KEY)),
        )

    def save_watermarks(
        self, watermarks: Mapping[str, str | None], *, leader: str | None = None
    ) -> bool:
        """Keep the entities' change watermarks (None: nothing to keep for that entity);
        False, and nothing kept, when the lock is no longer ``leader``'s."""
        kept = [(_WATERMARK + entity, mark) for entity, mark in watermarks.items() if mark]
        if not kept:
            return True
        args = [leader or "", *(item for pair in kept for item in pair)]
        return bool(self._save_marks(keys=[SCHEDULER_LOCK_KEY, DUE_INDEX_STATE_KEY], args=args))

    # -- a full plan ----------------------------------------------------------------------------

    def rebuild(
        self, entries: Iterable[Entry], state: PlanState, *, leader: str | None = None
    ) -> int | None:
        """Replace the whole index by ``entries`` (written aside, then swapped in at once, so
        a pass never sees half a plan) and its state by ``state``; return the entries kept,
        or None when the leader lock is no longer ``leader``'s (the plan is then dropped).

        Each rebuild writes under keys of its own, expiring ``DUE_INDEX_BUILDING_TTL`` after
        its last write: two rebuilds never share keys, and a killed one leaves none behind."""
        suffix = _BUILDING + uuid.uuid4().hex
        due_tmp, records_tmp = DUE_INDEX_KEY + suffix, DUE_INDEX_RECORDS_KEY + suffix
        ttl = int(DUE_INDEX_BUILDING_TTL.total_seconds())
        by_record: dict[str, list[str]] = {}
        count = 0
        pipe = self.client.pipeline(transaction=False)
        try:
            for entry in entries:
                pipe.zadd(due_tmp, {entry.key: entry.due_at.timestamp()})
                by_record.setdefault(entry.record, []).append(entry.key)
                count += 1
                if count % DUE_INDEX_CHUNK == 0:
                    pipe.expire(due_tmp, ttl)
                    pipe.execute()
            pipe.expire(due_tmp, ttl)
            for n, (record, keys) in enumerate(by_record.items(), start=1):
                pipe.hset(records_tmp, record, " ".join(keys))
                if n % DUE_INDEX_CHUNK == 0:
                    pipe.expire(records_tmp, ttl)
                    pipe.execute()
            pipe.expire(records_tmp, ttl)
            pipe.execute()
        except BaseException:
            self.client.delete(due_tmp, records_tmp)
            raise
        fields: list[str] = ["fingerprint", state.fingerprint]
        if state.horizon_end is not None:
            fields += ["horizon_end", f"{state.horizon_end.timestamp():.3f}"]
        for entity, mark in state.watermarks.items():
            fields += [_WATERMARK + entity, mark]
        swapped = self._swap(
            keys=[
                SCHEDULER_LOCK_KEY,
                DUE_INDEX_KEY,
                DUE_INDEX_RECORDS_KEY,
                DUE_INDEX_STATE_KEY,
                due_tmp,
                records_tmp,
            ],
            args=[leader or "", *fields],
        )
        return count if swapped else None

    # -- changes -------------------------------------------------------------------------------

    def replace(self, records: Iterable[str], entries: Iterable[Entry]) -> None:
        """Drop every entry of ``records`` (``entity:id``) and add ``entries`` (theirs, as
        re-planned; a deleted record has none)."""
        refs = list(dict.fromkeys(records))
        by_record: dict[str, list[Entry]] = {}
        for entry in entries:
            by_record.setdefault(entry.record, []).append(entry)
        for start in range(0, len(refs), DUE_INDEX_CHUNK):
            chunk = refs[start : start + DUE_INDEX_CHUNK]
            old = self.client.hmget(DUE_INDEX_RECORDS_KEY, chunk)
            pipe = self.client.pipeline(transaction=True)
            stale = [key for keys in old if keys for key in _text(keys).split()]
            if stale:
                pipe.zrem(DUE_INDEX_KEY, *stale)
            pipe.hdel(DUE_INDEX_RECORDS_KEY, *chunk)
            for ref in chunk:
                new = by_record.get(ref, [])
                if new:
                    pipe.zadd(DUE_INDEX_KEY, {e.key: e.due_at.timestamp() for e in new})
                    pipe.hset(DUE_INDEX_RECORDS_KEY, ref, " ".join(e.key for e in new))
            pipe.execute()

    def take_dirty(self, *, full: bool = False) -> list[str]:
        """The records the CRM's events named (``entity:id``), taken out of the dirty set at
        once: a mark added while this pass runs stays for the next one. Records a pass took
        and did not re-plan (it failed) are taken again. ``full``: the overflow flag is
        cleared too (a full pass plans everything; an overflow during it stays set)."""
        taken: list[Any] = self._take(
            keys=[DIRTY_RECORDS_KEY, DIRTY_TAKEN_KEY, DIRTY_OVERFLOW_KEY],
            args=["1" if full else "0"],
        )
        return sorted(_text(m) for m in taken)

    def begin(self) -> None:
        """A full pass starts: the CRM's events mark records dirty from now on (before the
        first plan exists, :func:`mark_dirty` keeps nothing)."""
        self.client.hsetnx(DUE_INDEX_STATE_KEY, "fingerprint", "")

    def clean(self) -> None:
        """The records taken by :meth:`take_dirty` were re-planned."""
        self.client.delete(DIRTY_TAKEN_KEY)

    def drop(self) -> None:
        """No rule is planned ahead: no index, no state, and no dirty marks kept."""
        self.client.delete(
            DUE_INDEX_KEY,
            DUE_INDEX_RECORDS_KEY,
            DUE_INDEX_STATE_KEY,
            DIRTY_RECORDS_KEY,
            DIRTY_TAKEN_KEY,
            DIRTY_OVERFLOW_KEY,
        )

    # -- what falls due -------------------------------------------------------------------------

    def due(self, now: datetime) -> list[tuple[str, datetime]]:
        """Every member due at or before ``now``, earliest first."""
        found: list[tuple[Any, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            DUE_INDEX_KEY, "-inf", now.timestamp(), withscores=True
        )
        return [(_text(member), datetime.fromtimestamp(score, UTC)) for member, score in found]

    def done(self, keys: Iterable[str]) -> None:
        """Drop members that were checked when due (claimed, or found not due any more)."""
        members = list(keys)
        for start in range(0, len(members), DUE_INDEX_CHUNK):
            self.client.zrem(DUE_INDEX_KEY, *members[start : start + DUE_INDEX_CHUNK])

    def size(self) -> int:
        return int(self.client.zcard(DUE_INDEX_KEY))


def mark_dirty(client: redis.Redis, entity: str, record_id: str) -> None:
    """Note that the CRM reported a change of ``entity`` ``record_id``: the next pass re-plans
    it (and, for a customer, that customer's records). Nothing is kept while no plan exists
    (no rule is planned ahead, or no scheduler planned yet: its first pass reads everything).
    Past ``MAX_DIRTY_RECORDS`` the set is left as it is and the overflow flag set: the next
    pass plans everything afresh."""
    client.eval(
        _MARK,
        3,
        DUE_INDEX_STATE_KEY,
        DIRTY_RECORDS_KEY,
        DIRTY_OVERFLOW_KEY,
        record_ref(entity, record_id),
        str(MAX_DIRTY_RECORDS),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
