"""A batch's life, top-down: take the keys, re-check, render, send, record.

:func:`deliver_batch` is the one function a worker runs for the keys of one queue message (up to
``DELIVERY_BATCH_SIZE``); every step is a helper below it, in the order it runs:

1. **take the keys**: wait out a send pause (:func:`_wait_out_pause`), else lease every key in
   the ledger in one round trip (:func:`_take`); a key already done, never claimed or leased
   by another worker gets its result here and goes no further;
2. **re-check** (:func:`_recheck`): read the CRM once per entity for the whole batch (one query
   on a database: :meth:`~worker.delivery.send.Deliverer.fetch`) and ask, key by key, whether
   the delivery is still due and still wanted with today's data;
3. **render and send** (:class:`_Sending`): one lookup of all suppressed addresses, then each
   message is rendered right before it goes out and handed to the channel, whose connections
   send them in one run of the thread's event loop;
4. **record**: each outcome as the channel reports it (:mod:`worker.delivery.outcome`: the
   ledger, the delivery log, a log line and the metrics); accepted messages of one turn of the
   event loop in one round trip, before the connection that sent them sends again.

What the batch shares is only round trips and connections: each lease and each outcome is its
own atomic step in the ledger, each delivery is re-checked against fresh CRM data and rendered
right before it goes out, and a crash still leaves at most one acknowledged but unrecorded
message per connection.

What a message is (re-check rules, rendering, headers) is :mod:`worker.delivery.send`'s; what an
ending means (retry, give up, suppress, pause) is :mod:`worker.delivery.outcome`'s. Neither calls
back into this module.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from worker.channels.base import Outgoing, Receipt, send_each
from worker.constants import BATCH_LEASE_RETRY, BATCH_LEASE_SHARE
from worker.delivery.outcome import Attempt, DeliveryResult, conclude
from worker.delivery.send import Deliverer
from worker.errors import RecipientRejectedError, RelayUnavailableError, SenderRejectedError
from worker.localtime import utc_now
from worker.planning.plan import PlannedDelivery, Skip
from worker.records.ledger import Begin, Finish
from worker.records.suppression import Suppressed

# One logger for every delivery outcome, whichever module writes it (README "Delivery guarantees").
log = logging.getLogger("worker.delivery")

#: One slot per key of the batch, in order; filled as each key reaches its outcome.
Results = list[DeliveryResult | None]


def deliver_batch(
    deliverer: Deliverer,
    keys: Sequence[str],
    *,
    as_of: datetime,
    enqueued_at: datetime,
    now: datetime | None = None,
) -> list[DeliveryResult]:
    """Deliver each of ``keys`` once; one result per key, in order.

    ``as_of`` is the instant the scheduler planned the batch for, ``enqueued_at`` when it was
    queued (wall clock): the re-check judges "still due" at ``as_of`` plus the time the batch
    waited in the queue."""
    now = now or utc_now()
    if not keys:
        return []
    remaining = deliverer.pause.remaining(now) if deliverer.pause is not None else None
    if remaining is not None:
        return _wait_out_pause(deliverer, keys, remaining)
    results: Results = [None] * len(keys)
    effective_now = as_of + (now - enqueued_at)
    leased_at = time.monotonic()
    attempts = _take(deliverer, keys, now, results)
    rechecked = _recheck(deliverer, attempts, effective_now, results)
    sending = _Sending(deliverer, rechecked, results, effective_now, leased_at)
    try:
        send_each(deliverer.channel, sending.messages(), sending.done)
    finally:
        sending.record_sent()  # what the last connections sent
    finished = [result for result in results if result is not None]
    assert len(finished) == len(keys), "every key of the batch has an outcome"
    return finished


def deliver_one(
    deliverer: Deliverer,
    key: str,
    *,
    as_of: datetime,
    enqueued_at: datetime,
    now: datetime | None = None,
) -> DeliveryResult:
    """:func:`deliver_batch` for a batch of one key."""
    return deliver_batch(deliverer, [key], as_of=as_of, enqueued_at=enqueued_at, now=now)[0]


def _wait_out_pause(
    deliverer: Deliverer, keys: Sequence[str], remaining: timedelta
) -> list[DeliveryResult]:
    """Every key ``paused`` while sending is paused: waiting out a pause is no attempt (the
    relay refused us, not these messages). They wait on purpose: their ledger deadline moves
    past the pause, so no sweeper queues them again meanwhile."""
    deliverer.ledger.postpone(keys, remaining)
    return [DeliveryResult(key, "paused", "sending is paused", remaining) for key in keys]


def _take(
    deliverer: Deliverer, keys: Sequence[str], now: datetime, results: Results
) -> list[tuple[int, Attempt]]:
    """Lease every key in one round trip; the attempts the ledger allows, by batch index.
    A key it does not allow gets its result now."""
    owner = lease_owner()
    begins = deliverer.ledger.begin_many(keys, now=now, owner=owner)
    attempts: list[tuple[int, Attempt]] = []
    for index, (key, begin) in enumerate(zip(keys, begins, strict=True)):
        attempt = _attempt_allowed(deliverer, key, begin, now, owner)
        if isinstance(attempt, DeliveryResult):
            results[index] = attempt
        else:
            attempts.append((index, attempt))
    return attempts


def _attempt_allowed(
    deliverer: Deliverer, key: str, begin: Begin, now: datetime, owner: str
) -> Attempt | DeliveryResult:
    """The attempt ``begin`` (the ledger's answer to the lease) allows, or why there is none."""
    if begin.verdict == "done":
        return DeliveryResult(key, "duplicate", f"already {begin.state}")
    if begin.verdict == "missing":
        log.warning("delivery %s was never claimed (or expired); not sending", key)
        return DeliveryResult(key, "skipped", "not in the ledger")
    if begin.verdict == "busy":
        wait = datetime.fromtimestamp(begin.lease_until, now.tzinfo) - now
        return DeliveryResult(key, "busy", "another worker is sending", wait)
    return Attempt(
        deliverer.ledger,
        deliverer.delivery_log,
        key,
        owner,
        begin.attempt,
        taken_over=begin.taken_over,
    )


def _recheck(
    deliverer: Deliverer,
    attempts: list[tuple[int, Attempt]],
    effective_now: datetime,
    results: Results,
) -> list[tuple[int, Attempt]]:
    """The attempts still due and wanted with today's CRM data, each with its
    ``planned`` delivery set; the others are recorded (skipped, or the read's failure)."""
    fetched = deliverer.fetch(attempt.key for _, attempt in attempts)
    rechecked: list[tuple[int, Attempt]] = []
    for index, attempt in attempts:
        try:
            planned = deliverer.recheck(attempt.key, effective_now, fetched)
        except Exception as exc:
            results[index] = conclude(deliverer, attempt, exc, effective_now)
            continue
        if isinstance(planned, Skip):
            results[index] = attempt.finish("skipped", planned.reason)
            continue
        attempt.planned = planned
        rechecked.append((index, attempt))
    return rechecked


class _Sending:
    """The rechecked attempts of one batch on their way out: renders each just before it is
    sent and records each outcome as the channel reports it."""

    def __init__(
        self,
        deliverer: Deliverer,
        attempts: list[tuple[int, Attempt]],
        results: Results,
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
        """Each attempt's message, rendered as the channel asks for it; an attempt that must
        not go out (paused, suppressed, out of lease time, unrenderable) is recorded instead."""
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
            if entry is not None and entry.stops(marketing=planned.marketing):
                reason = f"address is suppressed: {entry.reason}"
                self.results[index] = attempt.finish("skipped", reason)
                continue
            if time.monotonic() > self.lease_ends:
                self.results[index] = attempt.retry(
                    "the batch outlasted half the send lease", BATCH_LEASE_RETRY, refund=True
                )
                continue
            try:
                outgoing = self.deliverer.render(planned, utc_now())
            except Exception as exc:
                self.results[index] = conclude(self.deliverer, attempt, exc, self.effective_now)
                continue
            self.in_flight[outgoing.key] = (index, attempt)
            yield outgoing

    def done(self, message: Outgoing, outcome: Receipt | Exception) -> None:
        """The channel's answer for ``message``: accepted (recorded with others by
        :meth:`record_sent`) or an error, recorded now."""
        index, attempt = self.in_flight.pop(message.key)
        if isinstance(outcome, Receipt):
            if self.deliverer.pause is not None:
                self.deliverer.pause.sent_again()
            # Recorded by record_sent(), together with the other connections' messages that
            # were answered in the same turn of the event loop (one round trip for them all).
            self.sent.append((index, attempt, attempt.final("sent", "", outcome.detail)))
            return
        result = conclude(self.deliverer, attempt, outcome, self.effective_now)
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


def lease_owner() -> str:
    """Who holds a send lease: this process and thread."""
    return f"{os.getpid()}:{threading.get_ident()}"


def _planned(attempt: Attempt) -> PlannedDelivery:
    assert attempt.planned is not None, "only rechecked attempts are sent"
    return attempt.planned
