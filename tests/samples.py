"""One sample message context per template, shared by the tests that render every template in
every locale (approved text, the browser layout checks): long enough values to wrap, a name
with umlauts, a product the CRM also names in German, and an unsubscribe link."""

from __future__ import annotations

from typing import Any

#: The locales every sample template is checked in: each language the templates ship, and the
#: regional variants whose spelling, money or dates differ.
LOCALES = ("en", "de", "de-AT", "de-CH", "es", "es-MX")

#: Templates with a mail body (the webhook-only ``complaint-alert`` is not a mail).
MAIL_TEMPLATES = (
    "birthday",
    "purchase-anniversary",
    "delivery-follow-up",
    "complaint-follow-up",
    "complaint-escalation",
    "purchase-thank-you",
)


def sample_context(
    locale: str, *, tag: str = "1", named: bool = True, template: str = ""
) -> dict[str, Any]:
    """A message context as the worker builds it (plain data, dates as ISO text); the internal
    ``complaint-escalation`` gets no unsubscribe link, as in a real alert."""
    links = {
        "url": "https://links.example.com/unsubscribe/"
        "v1.eyJhIjoianVlcmdlbi5tdWVsbGVyQGV4YW1wbGUuY29tIiwiayI6Im0ifQ.c2lnbmF0dXJl",
        "mailto": "mailto:unsubscribe@example.com?subject=unsubscribe",
    }
    if template == "complaint-escalation":
        links = {"url": "", "mailto": ""}
    return {
        "customer": {
            "id": "42",
            "email": "juergen.mueller@example.com",
            "first_name": "Jürgen" if named else "",
            "last_name": "Müller-Lüdenscheidt" if named else "",
            "locale": locale,
            "timezone": "Europe/Zurich",
            "account_manager_email": "anna.berger@example.com",
        },
        "purchase": {
            "id": "P17",
            "product": "Road bike Ultegra Di2 carbon, size 56",
            "product_de": "Rennrad Ultegra Di2 Carbon, Rahmengröße 56",
            "total": "1234.50",
            "purchased_at": "2025-03-14",
            "delivered_at": "2026-03-07T09:00:00+00:00",
        },
        "complaint": {
            "id": "C7",
            "subject": "Parcel arrived damaged, box crushed on one side",
            "opened_at": "2026-03-10T13:16:00+00:00",
            "resolved_at": None,
        },
        "occurrence": {
            "key": f"sample:purchase:P17:{tag}",
            "tag": tag,
            "due_at": "2026-03-14T09:00:00+00:00",
        },
        "company": {
            "name": "Example Shop",
            "address": "Example Street 1, 12345 Example City",
            "crm_customer_url": "https://crm.example.com/contacts/{id}",
        },
        "unsubscribe": links,
    }
