"""Posting suppression events to the CRM: the outbox drained in order, with retries.

Each change to the suppression list leaves an event in the outbox
(:mod:`worker.records.suppression_events`); the sweeper of every worker and scheduler calls
:meth:`CrmEvents.post` after each sweep. One process at a time posts (a lock in Redis that
expires on its own when that process dies), oldest event first, through the webhook channel
(:mod:`worker.channels.webhook`): the same ``X-CRM-Timestamp`` and ``X-CRM-Signature`` as every
webhook, and ``Idempotency-Key`` set to the event id. An event leaves the outbox only after a
2xx answer.

When the CRM fails (down, a timeout, any non-2xx answer) the posting stops at that event, so
the CRM always sees events in the order they happened (an unsubscribe before the re-subscribe),
and waits :data:`~worker.constants.CRM_EVENTS_BACKOFF_FIRST`, doubled per failure up to
:data:`~worker.constants.CRM_EVENTS_BACKOFF_MAX` (or the ``Retry-After`` the CRM sent). Nothing
is ever dropped: a 4xx is retried as well (logged as an error, since only a fix on the CRM's
side helps), because an event the CRM refused today is still a change it needs to know.

Example::

    >>> events = CrmEvents(SuppressionOutbox(client), channel, "crm-events")  # doctest: +SKIP
    >>> events.post(now)
    PostReport(posted=2, failed=None)
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.channels.base import Outgoing
from worker.channels.webhook import WebhookChannel
from worker.constants import CRM_EVENTS_BACKOFF_FIRST, CRM_EVENTS_BACKOFF_MAX, CRM_EVENTS_PER_SWEEP
from worker.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from worker.records.suppression_events import PendingEvent, SuppressionOutbox
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostReport:
    """What one call posted, and why it stopped early (None: the outbox is empty, or it is
    not this process's turn)."""

    posted: int = 0
    failed: str | None = None


class CrmEvents:
    """Posts the suppression outbox to the CRM endpoint named ``endpoint`` of ``channel``."""

    def __init__(
        self,
        outbox: SuppressionOutbox,
        channel: WebhookChannel,
        endpoint: str,
        *,
        limit: int = CRM_EVENTS_PER_SWEEP,
    ) -> None:
        self.outbox = outbox
        self.channel = channel
        self.endpoint = endpoint
        self.limit = limit
        self._token = uuid.uuid4().hex
        # Held for one request at a time: longer than any one request may take.
        self._lock_ms = int(max(channel.timeout_s * 3, 30.0) * 1000)
        self._last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings, outbox: SuppressionOutbox) -> CrmEvents | None:
        """The poster ``CRM_CRM_EVENTS_URL`` asks for (None when unset), signed with
        ``CRM_WEBHOOK_SECRET``."""
        target = settings.crm_events_target
        if target is None:
            return None
        name, url = target
        secret = settings.webhook_secret
        channel = WebhookChannel(
            {name: url},
            secret=secret.get_secret_value().encode("utf-8") if secret else None,
            timeout_s=settings.webhook_timeout_s,
        )
        return cls(outbox, channel, name)

    def post(self, now: datetime) -> PostReport:
        """Post pending events, oldest first, until the outbox is empty, the CRM fails or
        :attr:`limit` are posted. Raises ``redis.RedisError`` when Redis is unreachable
        (nothing is lost: an event leaves the outbox only after the CRM took it)."""
        state = self.outbox.retry_state()
        if state.next_at is not None and now < state.next_at:
            return PostReport()
        if not self.outbox.lock(self._token, self._lock_ms):
            return PostReport()
        posted = 0
        try:
            for event in self.outbox.pending(self.limit):
                try:
                    self.channel.send(self._outgoing(event))
                except DeliveryError as exc:
                    self._failed(exc, now, state.attempts + 1)
                    return PostReport(posted, str(exc))
                self.outbox.delivered(event)
                posted += 1
                if not self.outbox.hold(self._token, self._lock_ms):
                    break  # held too long (a stalled process): another one goes on from here
        finally:
            self.outbox.unlock(self._token)
        if posted and self._last_error:
            log.info("the CRM takes suppression events again")
            self._last_error = ""
        return PostReport(posted)

    def _outgoing(self, event: PendingEvent) -> Outgoing:
        return Outgoing(
            key=event.id,
            channel="webhook",
            sender="",
            recipient=self.endpoint,
            message_id=event.id,
            data=event.body,
            content_type="application/json",
            endpoint=self.endpoint,
        )

    def _failed(self, exc: DeliveryError, now: datetime, attempts: int) -> None:
        wait = min(CRM_EVENTS_BACKOFF_FIRST * 2 ** min(attempts - 1, 20), CRM_EVENTS_BACKOFF_MAX)
        if isinstance(exc, TransientDeliveryError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        self.outbox.failed(next_at=now + wait)
        message = str(exc)
        if message == self._last_error:
            return  # one line per kind of trouble, not one per retry
        self._last_error = message
        if isinstance(exc, PermanentDeliveryError):
            log.error(
                "the CRM refused a suppression event (%s); it is kept and sent again in %s: "
                "fix the endpoint of CRM_CRM_EVENTS_URL",
                message,
                _seconds(wait),
            )
        else:
            log.warning(
                "suppression events wait for the CRM (%s); trying again in %s",
                message,
                _seconds(wait),
            )

    def close(self) -> None:
        self.channel.close()


def _seconds(wait: timedelta) -> str:
    return f"{wait.total_seconds():.0f} s"
