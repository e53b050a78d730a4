"""One attempt at a delivery and how its outcome is recorded.

Every outcome goes to four places at once, so they never disagree: the ledger (the source of
truth), the delivery log stream (``crm-worker report``), a structured log line (no secrets, no
message body) and the Prometheus counters. :func:`conclude` decides what an attempt that ended
on an error means (permanent, uncertain, transient, a pause, a CRM outage) and records it; the
batch (:mod:`worker.delivery.batch`) calls it, and nothing here calls back into the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, cast

from worker.constants import MAX_DELIVERY_ATTEMPTS, RETRY_BACKOFF_FIRST, RETRY_BACKOFF_MAX
from worker.delivery.send import Deliverer
from worker.errors import (
    PermanentDeliveryError,
    RecipientRejectedError,
    RelayUnavailableError,
    SenderRejectedError,
    SourceUnavailableError,
    TemplateError,
    TransientDeliveryError,
    UncertainDeliveryError,
)
from worker.localtime import utc_now
from worker.metrics import count_outcome
from worker.planning.plan import PlannedDelivery
from worker.records.delivery_log import DeliveryLog, LogEntry
from worker.records.ledger import Finish, Ledger
from worker.records.suppression_events import BOUNCED, SMTP

# One logger for every delivery outcome, whichever module writes it (README "Delivery guarantees").
log = logging.getLogger("worker.delivery")

#: The reason recorded with a ``sent`` whose earlier attempt was cut off mid-send (a worker
#: killed, Redis lost between the server's reply and the ledger write): the recipient may
#: have two copies, both with the same Message-ID. ``crm-worker report`` counts them.
POSSIBLY_TWICE = "possibly sent twice: an earlier attempt was cut off mid-send (same Message-ID)"

Outcome = Literal["sent", "skipped", "failed", "unknown", "retry", "duplicate", "busy", "paused"]
FinalState = Literal["sent", "skipped", "failed", "unknown"]


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one delivery key; ``retry_after`` is set for ``retry``, ``busy`` and
    ``paused``."""

    key: str
    outcome: Outcome
    reason: str = ""
    retry_after: timedelta | None = None


@dataclass
class Attempt:
    """The worker's attempt ``number`` (from 1) at delivery ``key`` under lease ``owner``;
    ``planned`` is known once the re-check passed."""

    ledger: Ledger
    delivery_log: DeliveryLog | None
    key: str
    owner: str
    number: int
    planned: PlannedDelivery | None = field(default=None)
    #: An earlier attempt was cut off mid-send: a ``sent`` now may be the second copy.
    taken_over: bool = False

    def finish(self, state: FinalState, reason: str, reply: str = "") -> DeliveryResult:
        """Record a final outcome everywhere."""
        final = self.final(state, reason, reply)
        return self.recorded(final, self.ledger.record(final))

    def final(self, state: FinalState, reason: str, reply: str = "") -> Finish:
        """The ledger write (with its delivery-log entry) of a final outcome, not yet made:
        :meth:`Ledger.finish_many` makes several at once, then :meth:`recorded` for each."""
        now = utc_now()
        if state == "sent" and self.taken_over and not reason:
            reason = POSSIBLY_TWICE
        entry = LogEntry(
            at=now,
            status=state,
            rule=self._rule,
            key=self.key,
            channel=self._channel,
            recipient=self.planned.to if self.planned is not None else "",
            reason=reason,
            reply=reply,
            attempt=self.number,
        )
        journal = self.delivery_log
        log_entry = None if journal is None else journal.append(entry)
        return Finish(self.key, state, self.owner, reason, reply, now, log_entry=log_entry)

    def recorded(self, final: Finish, finished: bool) -> DeliveryResult:
        """The result of ``final`` once the ledger has it (``finished``: the lease was still
        ours), logged and counted."""
        if not finished:
            log.warning("lost the lease on %s before recording %s", self.key, final.state)
        self._log(final.state, final.reason, final.detail)
        state = cast(FinalState, final.state)  # final() wrote one
        return DeliveryResult(self.key, state, final.reason)

    def retry(self, reason: str, delay: timedelta, *, refund: bool = False) -> DeliveryResult:
        """Put the delivery back for a later attempt; ``refund``: this one does not count."""
        if not self.ledger.finish(
            self.key,
            "retrying",
            owner=self.owner,
            reason=reason,
            now=utc_now(),
            refund_attempt=refund,
            retry_after=delay,
        ):
            log.warning("lost the lease on %s before recording a retry", self.key)
        self._log("retrying", f"{reason}; next attempt in {delay}", "")
        return DeliveryResult(self.key, "retry", reason, delay)

    @property
    def _rule(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def _channel(self) -> str:
        if self.planned is not None:
            return self.planned.action.channel
        return self.key.rpartition("/")[2]

    def _log(self, outcome: str, reason: str, reply: str) -> None:
        count_outcome(self._rule, self._channel, outcome)
        # Per message: DEBUG (crm-worker -v shows it); an outage must not write a line per
        # message at the default level. Failures stay visible: the report lists them too.
        level = logging.INFO if outcome in ("failed", "unknown") else logging.DEBUG
        log.log(
            level,
            "delivery outcome=%s rule=%s key=%s channel=%s to=%s attempt=%d reason=%r reply=%r",
            outcome,
            self._rule,
            self.key,
            self._channel,
            self.planned.to if self.planned is not None else "",
            self.number,
            reason,
            reply,
        )


def conclude(
    deliverer: Deliverer, attempt: Attempt, exc: Exception, effective_now: datetime
) -> DeliveryResult:
    """Record how the attempt ended on ``exc``, the error a step raised, classified
    (permanent, uncertain, transient, a pause, a CRM outage). A channel's receipt is recorded
    by the batch itself, with the other messages accepted in the same turn."""
    if isinstance(exc, TemplateError):
        return attempt.finish("failed", str(exc))
    if isinstance(exc, RecipientRejectedError):
        if deliverer.suppression is not None and attempt.planned is not None:
            deliverer.suppression.add(
                attempt.planned.to, str(exc), now=utc_now(), key=attempt.key,
                event=BOUNCED, source=SMTP,
            )  # fmt: skip
        return attempt.finish("failed", f"{exc}; address suppressed", exc.reply)
    if isinstance(exc, PermanentDeliveryError):
        return attempt.finish("failed", str(exc), exc.reply)
    if isinstance(exc, UncertainDeliveryError):
        return attempt.finish("unknown", str(exc), exc.reply)
    if isinstance(exc, RelayUnavailableError):
        if deliverer.pause is None:
            return _retry_or_give_up(deliverer, attempt, exc, effective_now)
        delay = deliverer.pause.pause(
            utc_now(), str(exc), length=deliverer.retry_backoff, alert=False
        )
        return attempt.retry(str(exc), delay, refund=True)
    if isinstance(exc, SenderRejectedError):
        if deliverer.pause is None:
            return _retry_or_give_up(deliverer, attempt, exc, effective_now)
        delay = deliverer.pause.pause(utc_now(), str(exc))
        return attempt.retry(str(exc), delay, refund=True)
    if isinstance(exc, TransientDeliveryError):
        return _retry_or_give_up(deliverer, attempt, exc, effective_now)
    if isinstance(exc, SourceUnavailableError):
        # A CRM database outage is not the message's fault: retry for as long as it lasts
        # without using up attempts; once the record can be read, the re-check's grace decides.
        delay = retry_delay(attempt.number, first=deliverer.retry_backoff)
        return attempt.retry(str(exc), delay, refund=True)
    # Unknown failure (bug, source outage): record it, never leave the lease dangling.
    log.error("failed %s", attempt.key, exc_info=exc)
    return attempt.finish("failed", f"{type(exc).__name__}: {exc}")


def _retry_or_give_up(
    deliverer: Deliverer, attempt: Attempt, exc: TransientDeliveryError, effective_now: datetime
) -> DeliveryResult:
    """Retry with backoff, unless the attempts are used up or the retry would go out after
    the rule's grace (a birthday mail three days late is worse than none)."""
    if attempt.number >= MAX_DELIVERY_ATTEMPTS:
        return attempt.finish("failed", f"gave up after {attempt.number} attempts: {exc}")
    delay = _asked_delay(exc) or retry_delay(attempt.number, first=deliverer.retry_backoff)
    planned = attempt.planned
    rule = deliverer.catalog.get(planned.rule_id) if planned is not None else None
    if planned is not None and rule is not None:
        deadline = planned.due_at + rule.grace
        if effective_now + delay > deadline:
            return attempt.finish(
                "failed",
                f"gave up: a retry would be later than the rule's grace "
                f"(due {planned.due_at.isoformat()}, grace {rule.grace}): {exc}",
                exc.reply,
            )
    return attempt.retry(str(exc), delay)


def retry_delay(attempt: int, *, first: timedelta = RETRY_BACKOFF_FIRST) -> timedelta:
    """Exponential backoff: 30 s, 1 min, 2 min … (from ``first``) capped at 30 min."""
    delay: timedelta = first * (2 ** max(attempt - 1, 0))
    return min(delay, RETRY_BACKOFF_MAX)


def _asked_delay(exc: Exception) -> timedelta | None:
    """The wait a server asked for (a webhook's ``Retry-After``), else ``None``."""
    return exc.retry_after if isinstance(exc, TransientDeliveryError) else None
