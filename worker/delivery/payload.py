"""The body of a webhook message, rendered from the rule's template.

A webhook template is ``templates/<name>/<locale>/webhook.json.j2`` (posted as
``application/json``; it must render to valid JSON, so insert values with ``| tojson``) or, when
that file is absent, the ``body.txt.j2`` of the template (posted as ``text/plain``). Locale
fallback, the sandbox and the render limits are those of every template.

Example ``templates/complaint-alert/en/webhook.json.j2`` for a Slack or Teams incoming webhook::

    {"text": {{ ("Complaint " ~ complaint.id ~ " from " ~ customer.email ~ " is still open: "
                 ~ complaint.subject) | tojson }}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from worker.channels.base import Outgoing
from worker.errors import TemplateError
from worker.messages.rendering import TemplateRenderer
from worker.planning.plan import PlannedDelivery

WEBHOOK_JSON = "webhook.json.j2"
WEBHOOK_TEXT = "body.txt.j2"


@dataclass(frozen=True)
class Payload:
    """A rendered webhook body and its content type."""

    body: bytes
    content_type: str


def render_payload(
    renderer: TemplateRenderer,
    name: str,
    locale: str | None,
    context: Mapping[str, Any],
    zone: ZoneInfo | None = None,
) -> Payload:
    """The webhook body of template ``name`` for a reader in ``locale`` and ``zone``;
    :class:`TemplateError` if it cannot be made."""
    chosen = renderer.resolve_locale(name, locale)
    if (renderer.templates_dir / name / chosen / WEBHOOK_JSON).is_file():
        text = renderer.render_part(name, chosen, WEBHOOK_JSON, context, zone)
        try:
            json.loads(text)
        except ValueError as exc:
            raise TemplateError(
                f"{name}/{chosen}/{WEBHOOK_JSON}",
                f"does not render to valid JSON ({exc}); insert values with | tojson",
            ) from None
        return Payload(text.encode("utf-8"), "application/json")
    text = renderer.render_part(name, chosen, WEBHOOK_TEXT, context, zone)
    return Payload(text.encode("utf-8"), "text/plain; charset=utf-8")


def webhook_message(
    renderer: TemplateRenderer,
    planned: PlannedDelivery,
    context: Mapping[str, Any],
    *,
    locale: str | None,
    zone: ZoneInfo | None,
) -> Outgoing:
    """The request a webhook delivery posts: its body, written for a reader in ``locale`` and
    ``zone``, to the endpoint its rule names."""
    payload = render_payload(renderer, planned.action.template, locale, context, zone)
    return Outgoing(
        key=planned.key,
        channel=planned.action.channel,
        sender="",
        recipient=planned.to,
        message_id=planned.key,
        data=payload.body,
        content_type=payload.content_type,
        endpoint=planned.action.webhook or "",
    )
