"""Where a planned message stands: what the ledger recorded for it and whether its address is
suppressed, for `plan` and `preview` (read-only).

A dry run that lists a message the ledger already recorded as sent tells a sales manager that a
customer is about to get it (again); this says "already sent on 2026-03-14 10:00 UTC" instead,
and that the address is on the suppression list when it is.

Example::

    >>> key = "birthday-greeting:customer:42:2026/email"
    >>> states = delivery_states(ledger, suppression, [(key, "kim@example.com")])  # doctest: +SKIP
    >>> states[0].describe()  # doctest: +SKIP
    'already sent on 2026-03-14 10:00 UTC'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.records.ledger import FINAL_STATES, Ledger
from worker.records.suppression import SuppressionList

#: How each final state reads, followed by when it happened.
_FINAL_WORDS = {
    "sent": "already sent on",
    "skipped": "skipped on",
    "failed": "failed on",
    "unknown": "maybe sent (connection lost) on",
}


@dataclass(frozen=True)
class DeliveryState:
    """The ledger ``state`` of one delivery ('' when it was never claimed), since ``at``, with
    the recorded ``reason``; ``suppressed`` is why its address is suppressed, or None."""

    state: str = ""
    at: datetime | None = None
    reason: str = ""
    suppressed: str | None = None

    @property
    def final(self) -> bool:
        """Is it done with (sent, skipped, failed, unknown)? A pass never plans it again."""
        return self.state in FINAL_STATES

    def describe(self) -> str:
        """One line for people: ``new``, ``queued since …``, ``already sent on …`` …"""
        when = f" {self.at.strftime('%Y-%m-%d %H:%M')} UTC" if self.at else ""
        if not self.state:
            words = "new"
        elif self.state in _FINAL_WORDS:
            final = _FINAL_WORDS[self.state]
            words = f"{final}{when}" if when else final.removesuffix(" on")
            if self.reason and self.state != "sent":
                words += f": {self.reason}"
        else:
            words = f"{self.state} since{when}" if when else self.state
        if self.suppressed is not None:
            words += f"; address suppressed: {self.suppressed}"
        return words

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state or "new",
            "state_at": self.at.isoformat().replace("+00:00", "Z") if self.at else None,
            "state_reason": self.reason or None,
            "suppressed": self.suppressed,
        }


def delivery_states(
    ledger: Ledger, suppression: SuppressionList, deliveries: Sequence[tuple[str, str]]
) -> list[DeliveryState]:
    """The state of each ``(delivery key, address)``, in two round trips for all of them."""
    with ledger.client.pipeline(transaction=False) as pipe:
        for key, _ in deliveries:
            pipe.hgetall(Ledger.redis_key(key))
        entries: list[Mapping[Any, Any]] = pipe.execute()
    suppressed = suppression.reasons(address for _, address in deliveries if address)
    return [
        _state({_text(k): _text(v) for k, v in entry.items()}, suppressed.get(address))
        for (_, address), entry in zip(deliveries, entries, strict=True)
    ]


def _state(entry: Mapping[str, str], suppressed: str | None) -> DeliveryState:
    state = entry.get("state", "")
    # The moment the entry last changed: finished for a final state, else claimed or reset.
    stamp = entry.get("finished_at") or entry.get("reset_at") or entry.get("claimed_at")
    at = datetime.fromtimestamp(float(stamp), UTC) if stamp else None
    return DeliveryState(state, at, entry.get("reason", ""), suppressed)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
