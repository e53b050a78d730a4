"""The delivery ledger in Redis: one hash per delivery key, the single source of truth.

A delivery is one message of one occurrence (``birthday-greeting:customer:42:2026/email``).
Its state only moves forward, each step an atomic Lua script::

    claimed ──> queued ──> sending ──> sent | skipped | failed | unknown
       │          ▲          │ ▲                           │        │
       └ (stale)  │          └─┘ retrying (transient       │        │
                  │              failure, lease expired)   │        │
                  └───────────── reset (retry-failed, on an operator's request)

* ``claim`` (scheduler, SET-NX semantics): the first pass that finds a due occurrence owns it;
  a claim that never reached the queue (scheduler crash) becomes claimable again after
  ``CLAIM_STALE_AFTER``.
* ``begin`` (worker): takes a time-limited lease before sending. A redelivered message finds
  ``sent`` and does nothing; one that finds a live lease waits; one that finds an expired lease
  (the worker died mid-send) takes over.
* ``finish``: records the outcome and reason; only the lease holder may. ``unknown``: the
  connection was lost after the message was handed over; final until an operator resets it.
* ``reset``: ``failed``/``unknown`` back to ``queued`` for ``crm-worker retry-failed``.
* ``take_over`` (the sweeper, :mod:`worker.delivery.sweeper`): every step above also sets the
  delivery's deadline in one sorted set (``DEADLINE_INDEX_KEY``) while it is not final;
  a delivery past its deadline is taken over and queued again. Deadlines are wall-clock
  times; ``offset`` keeps how far the planned instant was from the wall clock (``run --once
  --now`` replays a past day), so a taken-over delivery is re-checked as of its own day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from worker.constants import (
    CLAIM_DEADLINE,
    CLAIM_STALE_AFTER,
    DEADLINE_INDEX_KEY,
    LEDGER_KEY_PREFIX,
    LEDGER_SCRIPT_KEYS,
    LEDGER_TTL,
    QUEUE_DEADLINE,
    QUEUE_DEADLINE_PER_MESSAGE,
    SEND_LEASE,
)
from worker.localtime import utc_now

T = TypeVar("T")

State = Literal["claimed", "queued", "sending", "retrying", "sent", "skipped", "failed", "unknown"]
FINAL_STATES: frozenset[str] = frozenset({"sent", "skipped", "failed", "unknown"})
#: Final states an operator may send again (``crm-worker retry-failed``).
RETRYABLE_STATES: frozenset[str] = frozenset({"failed", "unknown"})

# The scripts that take many keys loop over KEYS, each key its own step exactly as a script of
# one key would be; one call per batch instead of one per key (a pass claims thousands).
# Several keys in one script are fine on one Redis (Dramatiq's broker needs one too), not on a
# Redis Cluster. KEYS[1] of these is the deadline index, the deliveries follow.

# ARGV: now, stale_before, ttl, deadline, offset, wall clock, then rule and due_at per key.
_CLAIM = """
local out = {}
for i = 2, #KEYS do
  local key, n = KEYS[i], i - 1
  local state = redis.call('HGET', key, 'state')
  out[n] = 0
  if not state then
    redis.call('HSET', key, 'state', 'claimed', 'rule', ARGV[5 + 2 * n],
               'due_at', ARGV[6 + 2 * n], 'claimed_at', ARGV[1], 'attempts', 0,
               'offset', ARGV[5], 'since', ARGV[6])
    redis.call('EXPIRE', key, ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[4], key)
    out[n] = 1
  elseif state == 'claimed'
     and tonumber(redis.call('HGET', key, 'claimed_at') or '0') < tonumber(ARGV[2]) then
    redis.call('HSET', key, 'claimed_at', ARGV[1], 'since', ARGV[6])
    redis.call('ZADD', KEYS[1], ARGV[4], key)
    out[n] = 1
  end
end
return out
"""

# ARGV: deadline, wall clock.
_QUEUED = """
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'state') == 'claimed' then
    redis.call('HSET', KEYS[i], 'state', 'queued', 'since', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[1], KEYS[i])
  end
end
return 1
"""

# ARGV: now, lease_until, owner. Returns verdict and value per key, one flat list.
_BEGIN = """
local out = {}
for i = 2, #KEYS do
  local key, n = KEYS[i], i - 1
  local verdict, value = 'go', '0'
  local state = redis.call('HGET', key, 'state')
  if not state then
    verdict = 'missing'
    redis.call('ZREM', KEYS[1], key)
  elseif state == 'sent' or state == 'skipped' or state == 'failed' or state == 'unknown' then
    verdict, value = 'done', state
  elseif state == 'sending'
     and tonumber(redis.call('HGET', key, 'lease_until') or '0') > tonumber(ARGV[1]) then
    verdict, value = 'busy', redis.call('HGET', key, 'lease_until')
  elseif state == 'retrying'
     and tonumber(redis.call('HGET', key, 'retry_at') or '0') > tonumber(ARGV[1]) then
    -- A second queue message of a delivery waiting out its backoff: it waits too.
    verdict, value = 'busy', redis.call('HGET', key, 'retry_at')
  end
  if verdict == 'go' then
    -- An expired lease: its worker was cut off mid-send and may have handed the message over.
    if state == 'sending' then redis.call('HINCRBY', key, 'takeovers', 1) end
    value = tostring(redis.call('HINCRBY', key, 'attempts', 1)) .. ':'
            .. (redis.call('HGET', key, 'takeovers') or '0')
    redis.call('HSET', key, 'state', 'sending', 'lease_until', ARGV[2], 'lease_owner', ARGV[3],
               'since', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], key)
  end
  out[2 * n - 1], out[2 * n] = verdict, value
end
return out
"""

# KEYS: the delivery, the deadline index, the log stream (optional). ARGV: owner, state,
# reason, detail, now, refund, deadline (of a retry), retry time, maxlen, then the log
# entry's fields.
_FINISH = """
local finished = 0
if redis.call('HGET', KEYS[1], 'state') == 'sending'
   and redis.call('HGET', KEYS[1], 'lease_owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'detail', ARGV[4],
             'finished_at', ARGV[5], 'since', ARGV[5])
  redis.call('HDEL', KEYS[1], 'lease_until')
  if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
  if ARGV[2] == 'retrying' then
    redis.call('ZADD', KEYS[2], ARGV[7], KEYS[1])
    redis.call('HSET', KEYS[1], 'retry_at', ARGV[8])
  else
    redis.call('ZREM', KEYS[2], KEYS[1])
    redis.call('HDEL', KEYS[1], 'retry_at')
  end
  finished = 1
end
if KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', unpack(ARGV, 10))
end
return finished
"""

# KEYS: the deadline index, then the deliveries. ARGV: the new deadline. Moves the deadline
# of each delivery that has one (not final) to at least ARGV[1].
_POSTPONE = """
for i = 2, #KEYS do
  local current = redis.call('ZSCORE', KEYS[1], KEYS[i])
  if current and tonumber(current) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[1], KEYS[i])
  end
end
return 1
"""

# KEYS: the delivery, the deadline index. ARGV: now, deadline, offset, wall clock.
_RESET = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'failed' and state ~= 'unknown' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'reset_at', ARGV[1],
           'offset', ARGV[3], 'since', ARGV[4])
redis.call('HDEL', KEYS[1], 'reason', 'detail', 'finished_at', 'lease_owner')
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1
"""

# KEYS: the deadline index. ARGV: now, new deadline, limit. Takes over each delivery whose
# deadline passed: a claimed one becomes queued, a sending one (lease expired: its worker died
# or lost Redis mid-send) keeps its state, so the next begin takes the lease over and a late
# finish of the old owner still counts; ``takeovers`` counts how often it was on the wire with
# no outcome recorded. Returns key, state and offset per taken delivery, one flat list.
_TAKE_OVER = """
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(due) do
  local state = redis.call('HGET', key, 'state')
  if state == 'claimed' or state == 'queued' or state == 'retrying' or state == 'sending' then
    local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0')
    if state == 'sending' and lease > tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], lease, key)
    else
      if state == 'claimed' then redis.call('HSET', key, 'state', 'queued', 'since', ARGV[1]) end
      if state == 'sending' then redis.call('HINCRBY', key, 'takeovers', 1) end
      redis.call('ZADD', KEYS[1], ARGV[2], key)
      out[#out + 1] = key
      out[#out + 1] = state
      out[#out + 1] = redis.call('HGET', key, 'offset') or '0'
    end
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
return out
"""


@dataclass(frozen=True)
class LogAppend:
    """A stream entry to append along with a final state: ``fields`` to ``stream``, which is
    trimmed to about ``maxlen`` entries."""

    stream: str
    maxlen: int
    fields: Mapping[str, str | int]


@dataclass(frozen=True)
class Finish:
    """One outcome for :meth:`Ledger.finish_many` (the arguments of :meth:`Ledger.finish`)."""

    key: str
    state: State
    owner: str
    reason: str
    detail: str
    now: datetime
    refund_attempt: bool = False
    log_entry: LogAppend | None = None
    #: For ``retrying``: when the next attempt is due (its deadline follows from it).
    retry_after: timedelta | None = None


@dataclass(frozen=True)
class Stale:
    """A delivery the sweeper took over: it was in ``state`` past its deadline. ``offset_s``:
    the planned instant minus the wall clock when it was claimed (0 outside replays)."""

    key: str
    state: str
    offset_s: float


@dataclass(frozen=True)
class Begin:
    """The outcome of :meth:`Ledger.begin`.

    ``verdict``: ``go`` (send now; ``attempt`` counts from 1), ``done`` (already final:
    ``state``), ``busy`` (another worker holds the lease until ``lease_until``), ``missing``
    (no such delivery was ever claimed).
    """

    verdict: Literal["go", "done", "busy", "missing"]
    attempt: int = 0
    state: str = ""
    lease_until: float = 0.0
    #: ``go`` only: an earlier attempt was cut off mid-send (its lease expired, the sweeper
    #: took the delivery over), so the server may already have it.
    taken_over: bool = False


def _ts(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


class Ledger:
    """Delivery states in Redis; every transition is one atomic script."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        send_lease: timedelta = SEND_LEASE,
        claim_deadline: timedelta = CLAIM_DEADLINE,
        queue_deadline: timedelta = QUEUE_DEADLINE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.client = client
        self.send_lease = send_lease
        self.claim_deadline = claim_deadline
        self.queue_deadline = queue_deadline
        #: The wall clock deadlines are measured on (a pass may plan for a replayed instant).
        self.clock = clock
        self._claim = client.register_script(_CLAIM)
        self._queued = client.register_script(_QUEUED)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._reset = client.register_script(_RESET)
        self._take_over = client.register_script(_TAKE_OVER)
        self._postpone = client.register_script(_POSTPONE)

    @staticmethod
    def redis_key(key: str) -> str:
        return LEDGER_KEY_PREFIX + key

    def claim(self, key: str, *, rule_id: str, due_at: datetime, now: datetime) -> bool:
        """Own ``key`` for enqueueing; False when it was claimed before (and is not stale)."""
        return self.claim_many([(key, rule_id, due_at)], now=now)[0]

    def claim_many(
        self, items: Iterable[tuple[str, str, datetime]], *, now: datetime
    ) -> list[bool]:
        """:meth:`claim` for many ``(key, rule_id, due_at)``, one script call per
        ``LEDGER_SCRIPT_KEYS`` (a pass claims thousands); one result per item, in order."""
        items = list(items)
        wall = self.clock()
        head: list[str | int] = [
            _ts(now),
            _ts(now - CLAIM_STALE_AFTER),
            int(LEDGER_TTL.total_seconds()),
            _ts(wall + self.claim_deadline),
            f"{(now - wall).total_seconds():.3f}",
            _ts(wall),
        ]
        claimed: list[bool] = []
        for chunk in _chunks(items):
            args = head + [arg for _, rule_id, due_at in chunk for arg in (rule_id, _ts(due_at))]
            keys = [DEADLINE_INDEX_KEY, *(self.redis_key(key) for key, _, _ in chunk)]
            claimed += [bool(one) for one in self._claim(keys=keys, args=args)]
        return claimed

    def queued_deadline(self, backlog: int = 0) -> datetime:
        """When a delivery queued now with ``backlog`` Dramatiq messages ahead of it counts as
        lost: the queue deadline, plus a little per message ahead (a long backlog drains slowly,
        and a delivery queued twice costs a worker a wasted look)."""
        return self.clock() + self.queue_deadline + QUEUE_DEADLINE_PER_MESSAGE * max(backlog, 0)

    def mark_queued(self, keys: Iterable[str], *, backlog: int = 0) -> None:
        """Record that these claimed deliveries are on the queue, behind ``backlog`` messages."""
        args: list[str | int] = [_ts(self.queued_deadline(backlog)), _ts(self.clock())]
        for chunk in _chunks(list(keys)):
            self._queued(keys=[DEADLINE_INDEX_KEY, *map(self.redis_key, chunk)], args=args)

    def begin(self, key: str, *, now: datetime, owner: str) -> Begin:
        """Take the send lease for ``key`` (see :class:`Begin`)."""
        return self.begin_many([key], now=now, owner=owner)[0]

    def begin_many(self, keys: Iterable[str], *, now: datetime, owner: str) -> list[Begin]:
        """:meth:`begin` for a worker's whole batch in one script call; one result per key, in
        order. Each key is decided as if alone (a busy or finished key does not hold up the
        others)."""
        args: list[str | int] = [_ts(now), _ts(now + self.send_lease), owner]
        begins: list[Begin] = []
        for chunk in _chunks(list(keys)):
            flat = self._begin(keys=[DEADLINE_INDEX_KEY, *map(self.redis_key, chunk)], args=args)
            begins += [
                _begin(verdict, value) for verdict, value in zip(flat[::2], flat[1::2], strict=True)
            ]
        return begins

    def finish(
        self,
        key: str,
        state: State,
        *,
        owner: str,
        reason: str = "",
        detail: str = "",
        now: datetime,
        refund_attempt: bool = False,
        log_entry: LogAppend | None = None,
        retry_after: timedelta | None = None,
    ) -> bool:
        """Record the outcome; False when ``owner`` no longer holds the lease.

        ``refund_attempt``: this attempt does not count towards the retry limit (the relay
        refused us, not this message). ``log_entry`` is appended to its stream in the same
        atomic step (even when the lease was lost: the log tells what happened), so the ledger
        and the delivery log never disagree, and a worker pays one round trip per outcome.
        ``retry_after`` (``retrying`` only): when the next attempt is due."""
        return self.record(
            Finish(key, state, owner, reason, detail, now, refund_attempt, log_entry, retry_after)
        )

    def record(self, item: Finish) -> bool:
        """:meth:`finish` for an outcome built beforehand."""
        keys, args = self._finish_call(item)
        return bool(self._finish(keys=keys, args=args))

    def finish_many(self, items: Sequence[Finish]) -> list[bool]:
        """:meth:`finish` for several outcomes in one round trip (the outcomes of a worker's
        connections that were answered together); each is still its own atomic step. One
        result per item, in order."""
        calls = [self._finish_call(item) for item in items]
        return [bool(finished) for finished in _run_each(self.client, self._finish, calls)]

    def _finish_call(self, item: Finish) -> tuple[list[str], list[str | int]]:
        keys = [self.redis_key(item.key), DEADLINE_INDEX_KEY]
        # A retry is due after its delay, then may wait in the queue like any queued delivery.
        wait = (item.retry_after or timedelta(0)) + self.queue_deadline
        args: list[str | int] = [
            item.owner,
            item.state,
            item.reason,
            item.detail[:500],
            _ts(item.now),
            "1" if item.refund_attempt else "0",
            _ts(self.clock() + wait),
            # On the clock the attempt ran on, as begin() compares it with its own ``now``.
            _ts(item.now + (item.retry_after or timedelta(0))),
        ]
        args.append(item.log_entry.maxlen if item.log_entry is not None else 0)
        if item.log_entry is not None:
            keys.append(item.log_entry.stream)
            for name, value in item.log_entry.fields.items():
                args += [name, value]
        return keys, args

    def postpone(self, keys: Sequence[str], wait: timedelta) -> None:
        """Move the deadline of each of ``keys`` still in flight to at least ``wait`` from now
        plus the queue deadline: they wait on purpose (a send pause), so no sweeper is to take
        them over meanwhile and queue them a second time."""
        deadline = _ts(self.clock() + wait + self.queue_deadline)
        for run in _chunks(list(keys)):
            redis_keys = [self.redis_key(k) for k in run]
            self._postpone(keys=[DEADLINE_INDEX_KEY, *redis_keys], args=[deadline])

    def reset(self, key: str, *, now: datetime) -> bool:
        """``failed``/``unknown`` back to ``queued`` with a fresh attempt count, atomically;
        False when ``key`` is in any other state (already sent, in flight, unknown key)."""
        wall = self.clock()
        args: list[str | int] = [
            _ts(now),
            _ts(self.queued_deadline()),
            f"{(now - wall).total_seconds():.3f}",
            _ts(wall),
        ]
        return bool(self._reset(keys=[self.redis_key(key), DEADLINE_INDEX_KEY], args=args))

    def take_over(self, *, limit: int, backlog: int = 0) -> list[Stale]:
        """Take over at most ``limit`` deliveries whose deadline passed (see ``_TAKE_OVER``):
        each gets a new deadline as if queued now behind ``backlog`` messages, and the caller
        queues it. Another sweeper running at the same time takes each one at most once."""
        args: list[str | int] = [_ts(self.clock()), _ts(self.queued_deadline(backlog)), limit]
        flat = self._take_over(keys=[DEADLINE_INDEX_KEY], args=args)
        return [
            Stale(_text(key)[len(LEDGER_KEY_PREFIX) :], _text(state), float(_text(offset)))
            for key, state, offset in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]

    def in_state(self, states: frozenset[str], *, rule_id: str | None = None) -> Iterator[str]:
        """Delivery keys (of ``rule_id`` only, when given) whose state is one of ``states``.

        Walks the ledger with SCAN: it reads every entry, so it is meant for operator commands
        (``retry-failed``), not for a worker's hot path."""
        pattern = self.redis_key(f"{rule_id}:*" if rule_id else "*")
        batch: list[str] = []
        for raw in self.client.scan_iter(match=pattern, count=1000):
            batch.append(_text(raw)[len(LEDGER_KEY_PREFIX) :])
            if len(batch) >= 1000:
                yield from (k for k, s in self.states(batch).items() if s in states)
                batch = []
        yield from (k for k, s in self.states(batch).items() if s in states)

    def get(self, key: str) -> Mapping[str, str]:
        """The ledger entry of ``key`` as text (empty when unknown)."""
        raw: Mapping[Any, Any] = self.client.hgetall(self.redis_key(key))
        return {_text(k): _text(v) for k, v in raw.items()}

    def states(self, keys: Iterable[str]) -> dict[str, str]:
        """Current state of each key ('' when unknown)."""
        keys = list(keys)
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(self.redis_key(key), "state")
            values = pipe.execute()
        return {key: _text(value) if value else "" for key, value in zip(keys, values, strict=True)}


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in runs of at most ``LEDGER_SCRIPT_KEYS`` (one script call each)."""
    for start in range(0, len(items), LEDGER_SCRIPT_KEYS):
        yield items[start : start + LEDGER_SCRIPT_KEYS]


def _run_each(
    client: redis.Redis, script: Script, calls: Sequence[tuple[list[str], list[str | int]]]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` in one round trip; the results in order.

    A script called on a redis-py pipeline first asks Redis whether it exists (SCRIPT EXISTS,
    a second round trip for every pipeline: ~9 % of a worker's CPU); here each call is an
    EVALSHA, and when Redis answers NOSCRIPT (restarted, or SCRIPT FLUSH) the script is loaded
    and exactly the calls that were refused run again. Any other error is raised."""
    results = _evalsha_each(client, script.sha, calls)
    missing = [n for n, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        client.script_load(script.script)
        again = _evalsha_each(client, script.sha, [calls[n] for n in missing])
        for n, result in zip(missing, again, strict=True):
            results[n] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _evalsha_each(
    client: redis.Redis, sha: str, calls: Sequence[tuple[list[str], list[str | int]]]
) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _begin(raw_verdict: Any, raw_value: Any) -> Begin:
    verdict, value = _text(raw_verdict), _text(raw_value)
    if verdict == "go":
        attempt, _, takeovers = value.partition(":")
        return Begin("go", attempt=int(attempt), taken_over=int(takeovers or 0) > 0)
    if verdict == "done":
        return Begin("done", state=value)
    if verdict == "busy":
        return Begin("busy", lease_until=float(value))
    return Begin("missing")


_SKIP_CLAIMED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'claimed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'skipped', 'reason', ARGV[1], 'finished_at', ARGV[2])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
"""


def skip_claimed(ledger: Ledger, key: str, *, reason: str, now: datetime) -> bool:
    """Record a delivery the scheduler claimed but will not queue (over the contact cap) as
    ``skipped`` with ``reason``: visible in the ledger, and never claimed again."""
    script = ledger.client.register_script(_SKIP_CLAIMED)
    keys = [ledger.redis_key(key), DEADLINE_INDEX_KEY]
    return bool(script(keys=keys, args=[reason, _ts(now)]))
