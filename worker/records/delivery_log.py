"""The delivery log: every final outcome of every delivery, in a capped Redis stream.

One stream entry per outcome (``sent``, ``skipped``, ``failed``, ``unknown``) with time, rule,
delivery key, channel, recipient, reason and the SMTP reply; never a message body. It is
appended by the ledger's ``finish`` script in the same atomic step as the final state
(:mod:`worker.delivery.outcome`), so the two never disagree, and trimmed to about
``DELIVERY_LOG_MAXLEN`` entries, and read by ``crm-worker report`` and ``retry-failed``.

Example::

    >>> log = DeliveryLog(client)                                  # doctest: +SKIP
    >>> summary = summarize(log.read(since=yesterday, rule="birthday-greeting"))
    >>> summary.counts[("birthday-greeting", "sent")]
    412
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worker.constants import DELIVERY_LOG_KEY, DELIVERY_LOG_MAXLEN, DELIVERY_LOG_TEXT_CHARS
from worker.records.ledger import LogAppend

#: Entries read from the stream per round trip.
_READ_CHUNK = 5_000


@dataclass(frozen=True)
class LogEntry:
    """One outcome of one delivery."""

    at: datetime
    status: str
    rule: str
    key: str
    channel: str = ""
    recipient: str = ""
    reason: str = ""
    reply: str = ""
    attempt: int = 0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat().replace("+00:00", "Z")
        return data


class DeliveryLog:
    """Appends outcomes to the stream and reads them back."""

    def __init__(self, client: redis.Redis, *, maxlen: int = DELIVERY_LOG_MAXLEN) -> None:
        self.client = client
        self.maxlen = maxlen

    def record(self, entry: LogEntry) -> None:
        """Append ``entry`` on its own (a worker appends it with the ledger write instead:
        :meth:`append`)."""
        fields: dict[Any, Any] = dict(self.append(entry).fields)
        self.client.xadd(DELIVERY_LOG_KEY, fields, maxlen=self.maxlen, approximate=True)

    def append(self, entry: LogEntry) -> LogAppend:
        """``entry`` as the stream entry :meth:`Ledger.finish` appends with a final state."""
        fields: dict[str, str | int] = {
            "at": f"{entry.at.timestamp():.3f}",
            "status": entry.status,
            "rule": entry.rule,
            "key": entry.key,
            "channel": entry.channel,
            "recipient": entry.recipient,
            "reason": entry.reason[:DELIVERY_LOG_TEXT_CHARS],
            "reply": entry.reply[:DELIVERY_LOG_TEXT_CHARS],
            "attempt": entry.attempt,
        }
        return LogAppend(DELIVERY_LOG_KEY, self.maxlen, fields)

    def read(self, *, since: datetime | None = None, rule: str | None = None) -> Iterator[LogEntry]:
        """Entries from ``since`` (default: the oldest kept), oldest first, of ``rule`` only
        when given."""
        start = f"{int(since.timestamp() * 1000)}-0" if since else "-"
        while True:
            chunk: Any = self.client.xrange(DELIVERY_LOG_KEY, start, "+", count=_READ_CHUNK)
            for _, raw in chunk:
                entry = _entry(raw)
                # The stream id (time of writing) narrows the range; ``at`` decides.
                if (rule is None or entry.rule == rule) and (since is None or entry.at >= since):
                    yield entry
            if len(chunk) < _READ_CHUNK:
                return
            start = "(" + _text(chunk[-1][0])


@dataclass
class Summary:
    """The latest outcome of each delivery in a stretch of the log."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[LogEntry] = field(default_factory=list)
    #: Sent deliveries whose earlier attempt was cut off mid-send (may be in the inbox twice).
    possibly_twice: list[LogEntry] = field(default_factory=list)


def summarize(entries: Iterable[LogEntry]) -> Summary:
    """Counts per (rule, status) and the failed/unknown deliveries with their reasons; a
    delivery that was retried on request counts once, by its latest outcome."""
    latest: dict[str, LogEntry] = {}
    for entry in entries:
        latest.pop(entry.key, None)  # keep insertion order = order of the latest outcome
        latest[entry.key] = entry
    summary = Summary()
    for entry in latest.values():
        summary.counts[(entry.rule, entry.status)] += 1
        if entry.status in ("failed", "unknown"):
            summary.problems.append(entry)
        elif entry.status == "sent" and entry.reason.startswith("possibly sent twice"):
            summary.possibly_twice.append(entry)
    return summary


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(raw: dict[Any, Any]) -> LogEntry:
    data = {_text(k): _text(v) for k, v in raw.items()}
    return LogEntry(
        at=datetime.fromtimestamp(float(data.get("at", "0")), UTC),
        status=data.get("status", ""),
        rule=data.get("rule", ""),
        key=data.get("key", ""),
        channel=data.get("channel", ""),
        recipient=data.get("recipient", ""),
        reason=data.get("reason", ""),
        reply=data.get("reply", ""),
        attempt=int(data.get("attempt", "0") or 0),
    )
