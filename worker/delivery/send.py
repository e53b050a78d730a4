"""What goes out for one delivery: the re-check against fresh CRM data, and the message itself.

:class:`Deliverer` holds what a worker process needs to build messages (catalog, source,
renderer, channel, ledger, signing, unsubscribe links), built once per process. Its methods
decide and build; they record nothing: :func:`worker.delivery.batch.deliver_batch` drives a
batch through them and :mod:`worker.delivery.outcome` records each ending. ``crm-worker
preview`` uses the same :meth:`Deliverer.build`, so a preview is the real message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from worker.channels.base import Channel, Outgoing
from worker.constants import RETRY_BACKOFF_FIRST
from worker.delivery.payload import webhook_message
from worker.errors import (
    SourceUnavailableError,
)
from worker.messages.mail import compose, message_id_for, verp_sender
from worker.messages.rendering import RenderedMessage, TemplateRenderer
from worker.messages.signature import DkimSigner
from worker.messages.unsubscribe import MARKETING, NO_LINKS_CONTEXT, UnsubscribeLinks, Unsubscriber
from worker.planning.events import EventLog
from worker.planning.plan import (
    DeliveryKey,
    PlannedDelivery,
    Related,
    Skip,
    StaffReader,
    customer_id_of,
    prepare_delivery,
)
from worker.planning.triggers import NotApplicable, occurrence_for_tag
from worker.records.delivery_log import DeliveryLog
from worker.records.ledger import Ledger
from worker.records.pause import SendPause
from worker.records.suppression import SuppressionList
from worker.rules.catalog import RuleCatalog
from worker.rules.models import EventTrigger
from worker.sources.base import Record, Source

log = logging.getLogger(__name__)

_UTC = ZoneInfo("UTC")
#: A due time this far after the pass instant still counts as "due" (clock skew between hosts).
DUE_TOLERANCE = timedelta(minutes=5)

#: Records read for several re-checks at once, by entity and id (``None``: no such record).
Fetched = Mapping[str, Mapping[str, Record | None]]


@dataclass(frozen=True)
class Deliverer:
    """Everything a worker needs to deliver messages, built once per process."""

    catalog: RuleCatalog
    source: Source
    renderer: TemplateRenderer
    channel: Channel
    ledger: Ledger
    default_zone: ZoneInfo
    mail_from: str
    envelope_sender: str
    sender_domain: str
    company: Mapping[str, str]
    reply_to: str | None = None
    unsubscriber: Unsubscriber | None = None
    dkim: DkimSigner | None = None
    suppression: SuppressionList | None = None
    pause: SendPause | None = None
    delivery_log: DeliveryLog | None = None
    retry_backoff: timedelta = RETRY_BACKOFF_FIRST
    #: Language and zone of internal mail whose send step names none (default: UTC, the
    #: default locale).
    staff: StaffReader | None = None
    #: CRM_VERP_ADDRESS: each mail's envelope sender is this address tagged with its delivery.
    verp_address: str | None = None

    def reader(self, planned: PlannedDelivery) -> tuple[str | None, ZoneInfo]:
        """The language and zone ``planned`` is written in (:meth:`PlannedDelivery.reader`)."""
        return planned.reader(self.default_zone, self.staff or StaffReader(None, _UTC))

    def fetch(self, keys: Iterable[str]) -> Fetched:
        """The records the re-checks of ``keys`` read: each key's subject record and, for a
        purchase or complaint, its customer, with one ``get_many`` per entity (one query each
        on a database instead of one or two per key). Keys that do not parse are left out, and
        so is an entity whose read fails: the re-checks read what is missing themselves."""
        wanted: dict[str, set[str]] = {}
        for key in keys:
            try:
                parsed = DeliveryKey.parse(key)
            except ValueError:
                continue
            wanted.setdefault(parsed.entity, set()).add(parsed.record_id)
        fetched: dict[str, Mapping[str, Record | None]] = {}
        for entity, ids in wanted.items():
            records = self._get_many(entity, ids)
            if records is not None:
                fetched[entity] = records
        customers = fetched.get("customer", {})
        missing = {
            customer_id
            for records in fetched.values()
            for record in records.values()
            if record is not None
            and (customer_id := customer_id_of(record))
            and customer_id not in customers
        }
        more = self._get_many("customer", missing) if missing else None
        if more is not None:
            fetched["customer"] = {**customers, **more}
        return fetched

    def _get_many(self, entity: str, ids: set[str]) -> Mapping[str, Record | None] | None:
        """``source.get_many``, or ``None`` when it fails: each re-check then reads its own
        record and meets the failure itself (a CRM outage: a refunded retry per key; anything
        else: that key's recorded failure), as it would without :meth:`fetch`."""
        try:
            return self.source.get_many(entity, ids)
        except SourceUnavailableError as exc:
            log.warning("reading %s records for a batch failed (%s); each alone", entity, exc)
        except Exception:
            log.exception("reading %s records for a batch failed; each alone", entity)
        return None

    def recheck(
        self, key: str, effective_now: datetime, fetched: Fetched | None = None
    ) -> PlannedDelivery | Skip:
        """Is this delivery still due, with today's data? (fresh record, rule, condition)

        ``fetched``: records :meth:`fetch` read for this key among others, just before; what it
        lacks is read here. Records nothing; raises what reading the CRM raises."""
        try:
            parsed = DeliveryKey.parse(key)
        except ValueError as exc:
            return Skip("?", "?", "?", str(exc), key)

        def skip(reason: str) -> Skip:
            return Skip(parsed.rule_id, parsed.entity, parsed.record_id, reason, key)

        rule = self.catalog.get(parsed.rule_id)
        if rule is None or not rule.enabled:
            return skip("rule no longer exists or is disabled")
        action = next((a for a in rule.send if a.action_id == parsed.action_id), None)
        if action is None:
            return skip(f"rule no longer sends {parsed.action_id!r}")
        records = fetched.get(parsed.entity) if fetched is not None else None
        if records is not None and parsed.record_id in records:
            record = records[parsed.record_id]
        else:
            record = self.source.get(parsed.entity, parsed.record_id)
        if record is None:
            return skip(f"{parsed.entity} {parsed.record_id} no longer exists")
        event = None
        if isinstance(rule.trigger.spec, EventTrigger):
            # The event store shares the ledger's Redis; an expired event cannot be re-checked.
            event = EventLog(self.ledger.client).get(parsed.tag)
            if event is None:
                return skip(f"event {parsed.tag} is no longer in the event store")
        customers = fetched.get("customer") if fetched is not None else None
        related = Related(rule, record, self.source, event, customers)
        try:
            occurrence = occurrence_for_tag(
                rule,
                record,
                parsed.tag,
                self.default_zone,
                now=effective_now,
                customer=None if record.entity == "customer" else related.customer,
                event=event,
            )
        except NotApplicable as exc:
            return skip(exc.reason)
        if occurrence is None or occurrence.due_at > effective_now + DUE_TOLERANCE:
            return skip("no longer due: the record changed since it was planned")
        if effective_now - occurrence.due_at > rule.grace:
            return skip(f"too late: due {occurrence.due_at.isoformat()}, grace {rule.grace}")
        return prepare_delivery(rule, action, occurrence, related.records(), self.company)

    def render(self, planned: PlannedDelivery, now: datetime) -> Outgoing:
        """What goes out for ``planned`` on its channel: a webhook's body, or the mail."""
        if planned.action.channel == "webhook":
            links = self.unsubscribe_links(planned)
            unsubscribe = links.as_context() if links else NO_LINKS_CONTEXT
            locale, zone = self.reader(planned)
            return webhook_message(
                self.renderer,
                planned,
                {**planned.context, "unsubscribe": unsubscribe},
                locale=locale,
                zone=zone,
            )
        return self.build(planned, now)[1]

    def build(
        self, planned: PlannedDelivery, now: datetime, *, unsubscribe_kind: str | None = None
    ) -> tuple[RenderedMessage, Outgoing]:
        """The rendered parts and the exact bytes that go out for ``planned``.

        ``crm-worker preview`` calls this too, so a preview is the real message.
        ``unsubscribe_kind`` overrides what the unsubscribe token leaves (``preview``: nothing).
        """
        links = self.unsubscribe_links(planned, unsubscribe_kind)
        context = {
            **planned.context,
            "unsubscribe": links.as_context() if links else NO_LINKS_CONTEXT,
        }
        locale, zone = self.reader(planned)
        message = self.renderer.render(planned.action.template, locale, context, zone)
        message_id = message_id_for(planned.key, self.sender_domain)
        data = compose(
            message,
            sender=self.mail_from,
            recipient=planned.to,
            recipient_name=planned.recipient_name,
            message_id=message_id,
            date=now,
            reply_to=self.reply_to,
            unsubscribe=links,
            # SpamAssassin scores List-Unsubscribe without List-Id (LIST_PARTIAL_SHORT_MSG).
            list_id=f"<{planned.rule_id}.{self.sender_domain}>" if links else None,
        )
        if self.dkim is not None:
            data = self.dkim.sign(data)
        outgoing = Outgoing(
            key=planned.key,
            channel=planned.action.channel,
            sender=(
                verp_sender(self.verp_address, planned.key)
                if self.verp_address
                else self.envelope_sender
            ),
            recipient=planned.to,
            message_id=message_id,
            data=data,
        )
        return message, outgoing

    def unsubscribe_links(
        self, planned: PlannedDelivery, kind: str | None = None
    ) -> UnsubscribeLinks | None:
        """Signed links for a marketing message to a customer; ``None`` for anything else (an
        alert to an account manager, a complaint follow-up: no subscription to leave).
        ``kind`` overrides what the link leaves (``preview`` for test copies: nothing)."""
        if self.unsubscriber is None or not planned.action.to_customer or not planned.marketing:
            return None
        return self.unsubscriber.links(planned.to, kind or MARKETING, planned.locale)
