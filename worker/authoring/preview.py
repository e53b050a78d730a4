"""``crm-worker preview``: the real message of a rule for a real customer, before anyone gets it.

A sales manager edits a template and wants to see what customer 42 will receive. The preview
takes the same path as a delivery – the fresh record from the source, the rule's condition and
recipient (:func:`~worker.planning.plan.prepare_delivery`), rendering and composing
(:meth:`~worker.delivery.send.Deliverer.build`) – but claims nothing in the ledger and sends
nothing, unless a test copy is asked for.

Example::

    previews = build_previews(runtime.deliverer, "birthday-greeting", "42", now)
    for item in previews:
        print(item.message.subject)
    send_test_copy(runtime.deliverer, previews[0], "manager@example.com", now)
"""

from __future__ import annotations

import difflib
import email.policy
import time
from dataclasses import dataclass, replace
from datetime import datetime
from email import message_from_bytes
from zoneinfo import ZoneInfo

from worker.channels.base import Outgoing, Receipt
from worker.delivery.send import Deliverer
from worker.errors import PreviewError
from worker.localtime import describe_local
from worker.messages.addresses import normalize_recipient
from worker.messages.rendering import RenderedMessage
from worker.messages.unsubscribe import PREVIEW_CHANNEL
from worker.planning.plan import (
    PlannedDelivery,
    Related,
    Skip,
    occurrences,
    prepare_delivery,
    subject_records,
)
from worker.planning.triggers import (
    NotApplicable,
    Occurrence,
    TriggerWindow,
    example_tag,
    record_zone,
)
from worker.rules.models import Rule
from worker.sources.base import Record


@dataclass(frozen=True)
class Preview:
    """One message of the rule as it would go out; ``note`` says if it is not due at ``now``.

    ``message`` holds an email's rendered parts; it is ``None`` for a webhook post, whose body
    is ``outgoing.data`` (of type ``outgoing.content_type``).
    """

    planned: PlannedDelivery
    message: RenderedMessage | None
    outgoing: Outgoing
    note: str = ""


def build_previews(
    deliverer: Deliverer, rule_id: str, customer_id: str, now: datetime
) -> list[Preview | Skip]:
    """Every message ``rule_id`` would send about ``customer_id`` at ``now`` (one per ``send``
    entry), or the reason it would not. Raises :class:`PreviewError` for an unknown rule or
    customer; a broken template raises :class:`~worker.errors.TemplateError`."""
    deliverer.catalog.refresh()
    rule = deliverer.catalog.get(rule_id)
    if rule is None:
        known = sorted(r.id for r in deliverer.catalog)
        guess = difflib.get_close_matches(rule_id, known, n=1)
        hint = f"did you mean {guess[0]!r}?" if guess else f"rules: {', '.join(known) or 'none'}"
        raise PreviewError(f"no rule {rule_id!r} in {deliverer.catalog.rules_dir}; {hint}")
    record = _subject_record(deliverer, rule, customer_id)
    occurrence, note = _occurrence(deliverer, rule, record, now)
    related = subject_records(rule, record, deliverer.source)
    results: list[Preview | Skip] = []
    for action in rule.send:
        planned = prepare_delivery(rule, action, occurrence, related, deliverer.company)
        if isinstance(planned, Skip):
            results.append(planned)
            continue
        if action.channel == "webhook":
            results.append(Preview(planned, None, deliverer.render(planned, now), note))
            continue
        message, outgoing = deliverer.build(planned, now)
        results.append(Preview(planned, message, outgoing, note))
    return results


def send_test_copy(deliverer: Deliverer, preview: Preview, address: str, now: datetime) -> Receipt:
    """Send ``preview`` to ``address`` through the configured channel, outside the ledger.

    The copy gets its own Message-ID (receivers drop a second mail with a known one) and an
    unsubscribe link for the ``preview`` channel, so clicking it leaves the customer subscribed.
    Only emails have test copies: a webhook post would land in the team's real chat.
    """
    if preview.message is None:
        raise PreviewError("a webhook post has no test copy; preview shows its body instead")
    to = normalize_recipient(address)
    copy = replace(
        preview.planned,
        to=to,
        recipient_name="",
        key=f"{preview.planned.key}/preview-{time.time_ns()}",
    )
    _, outgoing = deliverer.build(copy, now, unsubscribe_kind=PREVIEW_CHANNEL)
    return deliverer.channel.send(outgoing)


def _subject_record(deliverer: Deliverer, rule: Rule, customer_id: str) -> Record:
    """The record the rule is about: the customer, or the customer's first related record."""
    entity = rule.trigger.spec.entity
    source = deliverer.source
    if entity == "customer":
        record = source.get("customer", customer_id)
    else:
        record = next(
            (r for r in source.iter_records(entity) if str(r["customer_id"]) == customer_id),
            None,
        )
    if record is None:
        what = "customer" if entity == "customer" else f"{entity} of customer"
        raise PreviewError(f"no {what} {customer_id!r} in the CRM data; check the id")
    return record


def _occurrence(
    deliverer: Deliverer, rule: Rule, record: Record, now: datetime
) -> tuple[Occurrence, str]:
    """The occurrence due at ``now``, else a stand-in dated ``now`` with a note saying so."""
    window = TriggerWindow(now - rule.grace, now)
    related = Related(rule, record, deliverer.source)
    # A stand-in is still written on the customer's calendar.
    zone = record_zone(related.customer() or record, deliverer.default_zone)
    tag = example_tag(rule, now, "preview")
    stand_in = Occurrence(rule.id, record.entity, record.id, tag, now, zone)
    try:
        due = occurrences(rule, related, window, deliverer.default_zone)
    except NotApplicable as exc:
        note = f"the rule would not fire for this record ({exc.reason}); shown as if due now"
        return stand_in, note
    if due:
        return due[-1], ""
    note = f"not due at {now.isoformat()}; shown as if it were (use --now to pick the day)"
    return stand_in, note


_UTC = ZoneInfo("UTC")
#: Headers of a mail that a preview shows.
PREVIEW_HEADERS = ("From", "To", "Reply-To", "Subject", "Message-ID", "List-Unsubscribe")


def describe(item: Preview, state: str = "") -> str:
    """The preview as text: a summary line, the note and where the message stands (``state``:
    new, already sent on …, address suppressed …), then the mail's headers and parts, or
    the webhook's body exactly as it is posted."""
    planned, message, outgoing = item.planned, item.message, item.outgoing
    zone = planned.occurrence.zone or _UTC
    due = f"due {describe_local(planned.due_at, zone)} · key {planned.key}"
    note = [f"note: {item.note}"] if item.note else []
    note += [f"ledger: {state}"] if state else []
    if message is None:
        body = outgoing.data.decode("utf-8", "replace")
        return "\n".join(
            [
                f"== {planned.rule_id} → webhook {outgoing.endpoint} (for {planned.to}) · "
                f"template {planned.action.template} · {due}",
                *note,
                f"Content-Type: {outgoing.content_type}",
                f"-- body --\n{body}",
            ]
        )
    mail = message_from_bytes(outgoing.data, policy=email.policy.default)
    headers = [f"{name}: {mail[name]}" for name in PREVIEW_HEADERS if mail[name] is not None]
    return "\n".join(
        [
            f"== {planned.rule_id} → {planned.to} · template {message.template}/{message.locale}"
            f" · {due}",
            *note,
            *headers,
            f"-- text --\n{message.text}\n-- html --\n{message.html}",
        ]
    )
