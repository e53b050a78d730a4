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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from worker.constants import (
    CLAIM_STALE_AFTER,
    LEDGER_KEY_PREFIX,
    LEDGER_SCRIPT_KEYS,
    LEDGER_TTL,
    SEND_LEASE,
)

T = TypeVar("T")

State = Literal["claimed", "queued", "sending", "retrying", "sent", "skipped", "failed", "unknown"]
FINAL_STATES: frozenset[str] = frozenset({"sent", "skipped", "failed", "unknown"})
#: Final states an operator may send again (``crm-worker retry-failed``).
RETRYABLE_STATES: frozenset[str] = frozenset({"failed", "unknown"})

# The scripts that take many keys loop over KEYS, each key its own step exactly as a script of
# one key would be; one call per batch instead of one per key (a pass claims thousands).
# Several keys in one script are fine on one Redis (Dramatiq's broker needs one too), not on a
# Redis Cluster.

# ARGV: now, stale_before, ttl, then rule and due_at per key.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local state = redis.call('HGET', key, 'state')
  out[i] = 0
  if not state then
    redis.call('HSET', key, 'state', 'claimed', 'rule', ARGV[2 + 2 * i],
               'due_at', ARGV[3 + 2 * i], 'claimed_at', ARGV[1], 'attempts', 0)
    redis.call('EXPIRE', key, ARGV[3])
    out[i] = 1
  elseif state == 'claimed'
     and tonumber(redis.call('HGET', key, 'claimed_at') or '0') < tonumber(ARGV[2]) then
    redis.call('HSET', key, 'claimed_at', ARGV[1])
    out[i] = 1
  end
end
return out
"""

_QUEUED = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'state') == 'claimed' then
    redis.call('HSET', key, 'state', 'queued')
  end
end
return 1
"""

# ARGV: now, lease_until, owner. Returns verdict and value per key, one flat list.
_BEGIN = """
local out = {}
for i, key in ipairs(KEYS) do
  local verdict, value = 'go', '0'
  local state = redis.call('HGET', key, 'state')
  if not state then
    verdict = 'missing'
  elseif state == 'sent' or state == 'skipped' or state == 'failed' or state == 'unknown' then
    verdict, value = 'done', state
  elseif state == 'sending'
     and tonumber(redis.call('HGET', key, 'lease_until') or '0') > tonumber(ARGV[1]) then
    verdict, value = 'busy', redis.call('HGET', key, 'lease_until')
  end
  if verdict == 'go' then
    value = tostring(redis.call('HINCRBY', key, 'attempts', 1))
    redis.call('HSET', key, 'state', 'sending', 'lease_until', ARGV[2], 'lease_owner', ARGV[3])
  end
  out[2 * i - 1], out[2 * i] = verdict, value
end
return out
"""

_FINISH = """
local finished = 0
if redis.call('HGET', KEYS[1], 'state') == 'sending'
   and redis.call('HGET', KEYS[1], 'lease_owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'detail', ARGV[4],
             'finished_at', ARGV[5])
  redis.call('HDEL', KEYS[1], 'lease_until')
  if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
  finished = 1
end
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(ARGV, 8))
end
return finished
"""

_RESET = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'failed' and state ~= 'unknown' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'reset_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'reason', 'detail', 'finished_at', 'lease_owner')
return 1
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


def _ts(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


class Ledger:
    """Delivery states in Redis; every transition is one atomic script."""

    def __init__(self, client: redis.Redis, *, send_lease: timedelta = SEND_LEASE) -> None:
        self.client = client
        self.send_lease = send_lease
        self._claim = client.register_script(_CLAIM)
        self._queued = client.register_script(_QUEUED)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._reset = client.register_script(_RESET)

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
        head: list[str | int] = [
            _ts(now),
            _ts(now - CLAIM_STALE_AFTER),
            int(LEDGER_TTL.total_seconds()),
        ]
        claimed: list[bool] = []
        for chunk in _chunks(items):
            args = head + [arg for _, rule_id, due_at in chunk for arg in (rule_id, _ts(due_at))]
            keys = [self.redis_key(key) for key, _, _ in chunk]
            claimed += [bool(one) for one in self._claim(keys=keys, args=args)]
        return claimed

    def mark_queued(self, keys: Iterable[str]) -> None:
        """Record that these claimed deliveries are on the queue."""
        for chunk in _chunks(list(keys)):
            self._queued(keys=[self.redis_key(key) for key in chunk], args=[])

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
            flat = self._begin(keys=[self.redis_key(key) for key in chunk], args=args)
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
    ) -> bool:
        """Record the outcome; False when ``owner`` no longer holds the lease.

        ``refund_attempt``: this attempt does not count towards the retry limit (the relay
        refused us, not this message). ``log_entry`` is appended to its stream in the same
        atomic step (even when the lease was lost: the log tells what happened), so the ledger
        and the delivery log never disagree, and a worker pays one round trip per outcome."""
        return self.record(
            Finish(key, state, owner, reason, detail, now, refund_attempt, log_entry)
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
        keys = [self.redis_key(item.key)]
        args: list[str | int] = [
            item.owner,
            item.state,
            item.reason,
            item.detail[:500],
            _ts(item.now),
            "1" if item.refund_attempt else "0",
        ]
        if item.log_entry is not None:
            keys.append(item.log_entry.stream)
            args.append(item.log_entry.maxlen)
            for name, value in item.log_entry.fields.items():
                args += [name, value]
        return keys, args

    def reset(self, key: str, *, now: datetime) -> bool:
        """``failed``/``unknown`` back to ``queued`` with a fresh attempt count, atomically;
        False when ``key`` is in any other state (already sent, in flight, unknown key)."""
        return bool(self._reset(keys=[self.redis_key(key)], args=[_ts(now)]))

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
        return Begin("go", attempt=int(value))
    if verdict == "done":
        return Begin("done", state=value)
    if verdict == "busy":
        return Begin("busy", lease_until=float(value))
    return Begin("missing")


_SKIP_CLAIMED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'claimed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'skipped', 'reason', ARGV[1], 'finished_at', ARGV[2])
return 1
"""


def skip_claimed(ledger: Ledger, key: str, *, reason: str, now: datetime) -> bool:
    """Record a delivery the scheduler claimed but will not queue (over the contact cap) as
    ``skipped`` with ``reason``: visible in the ledger, and never claimed again."""
    script = ledger.client.register_script(_SKIP_CLAIMED)
    return bool(script(keys=[ledger.redis_key(key)], args=[reason, _ts(now)]))
