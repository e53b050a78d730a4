"""Delivering a batch of keys as a unit: the steps of :class:`~worker.delivery.send.Deliverer`, with
the Redis round trips and the event loop shared by the whole batch.

A Dramatiq message carries up to ``DELIVERY_BATCH_SIZE`` keys. Key by key, each delivery took
five Redis round trips (pause, lease, suppression, outcome, log) and one or two reads of the
CRM, and entered the SMTP channel's event loop once; per batch it takes one round trip for the
pause, one for all the leases, one read of the CRM per entity for the re-checks (one query on
a database: :meth:`~worker.delivery.send.Deliverer.fetch`) and one round trip for all the
suppressed addresses, then one for the outcomes (ledger and log together) of the messages the
relay answered in the same turn of the event loop, and the messages go out in one run of the
thread's event loop.

What does not change, key by key: each lease and each outcome is its own atomic step in the
ledger, each delivery is re-checked against fresh CRM data and rendered right before it goes
out, and each outcome is recorded before the connection that sent it sends again, so a crash
still leaves at most one acknowledged but unrecorded message per connection.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from worker.channels.base import Outgoing, Receipt, send_each
from worker.constants import BATCH_LEASE_RETRY, BATCH_LEASE_SHARE
from worker.delivery.outcome import Attempt, DeliveryResult
from worker.delivery.send import Deliverer, lease_owner
from worker.errors import RecipientRejectedError, RelayUnavailableError, SenderRejectedError
from worker.localtime import utc_now
from worker.planning.plan import PlannedDelivery
from worker.records.ledger import Finish
from worker.records.suppression import Suppressed


def deliver_batch(
    deliverer: Deliverer,
    keys: Sequence[str],
    *,
    as_of: datetime,
    enqueued_at: datetime,
    now: datetime | None = None,
) -> list[DeliveryResult]:
    """Deliver each of ``keys`` once, as :meth:`Deliverer.deliver` would; one result per key,
    in order. ``as_of`` and ``enqueued_at`` as there."""
    now = now or utc_now()
    if not keys:
        return []
    held = deliverer.paused(keys[0], now)
    if held is not None:
        # They wait out the pause on purpose: no sweeper is to queue them again meanwhile.
        if held.retry_after is not None:
            deliverer.ledger.postpone(keys, held.retry_after)
        return [dataclasses.replace(held, key=key) for key in keys]
    owner = lease_owner()
    leased_at = time.monotonic()
    begins = deliverer.ledger.begin_many(keys, now=now, owner=owner)
    effective_now = as_of + (now - enqueued_at)
    results: list[DeliveryResult | None] = [None] * len(keys)
    opened: list[tuple[int, Attempt]] = []
    for index, (key, begin) in enumerate(zip(keys, begins, strict=True)):
        attempt = deliverer.open(key, begin, now, owner)
        if isinstance(attempt, DeliveryResult):
            results[index] = attempt
        else:
            opened.append((index, attempt))
    fetched = deliverer.fetch(attempt.key for _, attempt in opened)
    attempts: list[tuple[int, Attempt]] = []
    for index, attempt in opened:
        rechecked = deliverer.recheck(attempt, effective_now, fetched)
        if isinstance(rechecked, DeliveryResult):
            results[index] = rechecked
        else:
            attempts.append((index, attempt))
    sending = _Sending(deliverer, attempts, results, effective_now, leased_at)
    try:
        send_each(deliverer.channel, sending.messages(), sending.done)
    finally:
        sending.record_sent()  # what the last connections sent
    finished = [result for result in results if result is not None]
    assert len(finished) == len(keys), "every key of the batch has an outcome"
    return finished


class _Sending:
    """The rechecked attempts of one batch on their way out: renders each just before it is
    sent and records each outcome as the channel reports it."""

    def __init__(
        self,
        deliverer: Deliverer,
        attempts: list[tuple[int, Attempt]],
        results: list[DeliveryResult | None],
        effective_now: datetime,
        leased_at: float,
    ) -> None:
        self.deliverer = deliverer
        # Grouped by channel, so a router hands each channel one run of messages.
        self.attempts = sorted(attempts, key=lambda item: _planned(item[1]).action.channel)
        self.results = results
        self.effective_now = effective_now
        lease_s = deliverer.ledger.send_lease.total_seconds()
        self.lease_ends = leased_at + lease_s * BATCH_LEASE_SHARE
        suppression = deliverer.suppression
        self.suppressed = (
            suppression.entries(_planned(a).to for _, a in attempts)
            if suppression is not None
            else {}
        )
        self.halt: timedelta | None = None  # set when the relay refused us: sending is paused
        self.in_flight: dict[str, tuple[int, Attempt]] = {}
        self.sent: list[tuple[int, Attempt, Finish]] = []  # accepted, not yet in the ledger

    def messages(self) -> Iterator[Outgoing]:
        deliverer = self.deliverer
        for index, attempt in self.attempts:
            # A connection asks for its next message only after done() heard its last one:
            # record what was sent first, so each outcome is in the ledger before the
            # connection that sent it sends again (the crash window stays one message each).
            self.record_sent()
            if self.halt is not None:
                self.results[index] = attempt.retry("sending is paused", self.halt, refund=True)
                continue
            planned = _planned(attempt)
            entry = self.suppressed.get(planned.to)
            # An unsubscribe stops marketing mail only; a bounce or complaint stops all mail.
            stopped = entry is not None and entry.stops(marketing=planned.marketing)
            screened = deliverer.screen(attempt, entry.reason if entry and stopped else None)
            if screened is not None:
                self.results[index] = screened
                continue
            if time.monotonic() > self.lease_ends:
                self.results[index] = attempt.retry(
                    "the batch outlasted half the send lease", BATCH_LEASE_RETRY, refund=True
                )
                continue
            prepared = deliverer.prepare(attempt, utc_now(), self.effective_now)
            if isinstance(prepared, DeliveryResult):
                self.results[index] = prepared
                continue
            self.in_flight[prepared.key] = (index, attempt)
            yield prepared

    def done(self, message: Outgoing, outcome: Receipt | Exception) -> None:
        index, attempt = self.in_flight.pop(message.key)
        if isinstance(outcome, Receipt):
            if self.deliverer.pause is not None:
                self.deliverer.pause.sent_again()
            # Recorded by record_sent(), together with the other connections' messages that
            # were answered in the same turn of the event loop (one round trip for them all).
            self.sent.append((index, attempt, attempt.final("sent", "", outcome.detail)))
            return
        result = self.deliverer.conclude(attempt, outcome, self.effective_now)
        self.results[index] = result
        if isinstance(outcome, RecipientRejectedError) and self.deliverer.suppression is not None:
            # Suppressed by conclude(): a later message of this batch to it is skipped too.
            address = _planned(attempt).to
            self.suppressed[address] = Suppressed(address, str(outcome), utc_now())
        paused = isinstance(outcome, RelayUnavailableError | SenderRejectedError)
        if paused and self.deliverer.pause is not None and result.retry_after is not None:
            self.halt = result.retry_after

    def record_sent(self) -> None:
        """Record every accepted message not yet in the ledger, in one round trip."""
        if not self.sent:
            return
        sent, self.sent = self.sent, []
        if len(sent) == 1:
            finished = [self.deliverer.ledger.record(sent[0][2])]
        else:
            finished = self.deliverer.ledger.finish_many([final for _, _, final in sent])
        for (index, attempt, final), ok in zip(sent, finished, strict=True):
            self.results[index] = attempt.recorded(final, ok)


def _planned(attempt: Attempt) -> PlannedDelivery:
    assert attempt.planned is not None, "only rechecked attempts are sent"
    return attempt.planned
