"""The customers' unsubscribe pages: RFC 8058 one-click, a confirmation page, a way back.

Served by ``crm-worker intake`` at the path of ``CRM_UNSUBSCRIBE_URL`` (``/unsubscribe`` by
default), next to the authenticated event endpoint. Safe to expose: the signed token in the
URL is the only credential (:mod:`worker.messages.unsubscribe`), and every answer is the same
whether the token is genuine or not, so the pages tell a prober nothing.

====================================  ===================================================
``GET  /unsubscribe/<token>``         a page in the reader's language with one button;
                                      nothing changes (link scanners follow every GET)
``POST /unsubscribe/<token>``         body ``List-Unsubscribe=One-Click`` (what Gmail and
                                      Yahoo send, and what the button sends): the address
                                      leaves marketing mail; 200 and a page, no redirect
``POST /unsubscribe/<token>/undo``    within 24 hours of it: subscribed again
====================================  ===================================================

400 a POST without ``List-Unsubscribe=One-Click``; 413 a body over
:data:`~worker.constants.MAX_UNSUBSCRIBE_BODY_BYTES`; 429 more than
:data:`~worker.constants.UNSUBSCRIBE_REQUESTS_PER_MINUTE` requests from one client; 503 only
when Redis is down (the mail provider tries again). No page shows a stack trace.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import redis
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from worker.constants import (
    INTAKE_RETRY_AFTER_S,
    MAX_RATE_LIMITED_CLIENTS,
    MAX_UNSUBSCRIBE_BODY_BYTES,
    RESUBSCRIBE_WITHIN,
    UNSUBSCRIBE_REQUESTS_PER_MINUTE,
)
from worker.errors import SourceUnavailableError, UnsubscribeTokenError
from worker.localtime import utc_now
from worker.messages.unsubscribe import MARKETING, OptOut, unverified_locale
from worker.records import suppression_events as change
from worker.records.suppression import MARKETING_ONLY
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.reading import read_limited

log = logging.getLogger(__name__)

#: The reason recorded for an unsubscribe through these pages (and looked for by "undo").
UNSUBSCRIBED = "unsubscribed (one-click)"
#: What the CRM is told when the address comes back through the way back on the done page.
RESUBSCRIBED_REASON = "re-subscribed (one-click)"
ONE_CLICK = "One-Click"

#: Response headers of every page: nothing loads from elsewhere, no framing, no caching, and
#: no referrer leaves with the token in it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

#: What the pages say, per language (the token's locale; English otherwise).
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Unsubscribe",
        "ask": "Do you want to stop receiving these e-mails from {company}?",
        "button": "Unsubscribe",
        "done_title": "You are unsubscribed",
        "done": "You will get no more of these e-mails from {company}. Messages about your "
        "orders and requests still reach you.",
        "undo": "Changed your mind?",
        "undo_button": "Subscribe again",
        "undone_title": "Subscribed again",
        "undone": "If you unsubscribed with this link within the last 24 hours, you are "
        "subscribed again.",
        "bad": "This address only takes the unsubscribe button. Open the link from the e-mail "
        "and press the button.",
        "busy": "Too many requests. Please try again in a minute.",
        "later": "We cannot take your request right now. Please try again in a few minutes.",
    },
    "de": {
        "title": "Abmelden",
        "ask": "Möchten Sie diese E-Mails von {company} nicht mehr erhalten?",
        "button": "Abmelden",
        "done_title": "Sie sind abgemeldet",
        "done": "Sie erhalten diese E-Mails von {company} nicht mehr. Nachrichten zu Ihren "
        "Bestellungen und Anliegen erreichen Sie weiterhin.",
        "undo": "Doch anders entschieden?",
        "undo_button": "Wieder anmelden",
        "undone_title": "Wieder angemeldet",
        "undone": "Wenn Sie sich in den letzten 24 Stunden mit diesem Link abgemeldet haben, "
        "sind Sie wieder angemeldet.",
        "bad": "Diese Adresse nimmt nur den Abmelde-Knopf an. Öffnen Sie den Link aus der "
        "E-Mail und drücken Sie den Knopf.",
        "busy": "Zu viele Anfragen. Bitte versuchen Sie es in einer Minute noch einmal.",
        "later": "Wir können Ihre Anfrage gerade nicht annehmen. Bitte versuchen Sie es in "
        "einigen Minuten noch einmal.",
    },
    "es": {
        "title": "Darse de baja",
        "ask": "¿Quieres dejar de recibir estos correos de {company}?",
        "button": "Darme de baja",
        "done_title": "Te has dado de baja",
        "done": "No recibirás más estos correos de {company}. Los mensajes sobre tus pedidos "
        "y solicitudes te seguirán llegando.",
        "undo": "¿Has cambiado de opinión?",
        "undo_button": "Volver a suscribirme",
        "undone_title": "Suscripción recuperada",
        "undone": "Si te diste de baja con este enlace en las últimas 24 horas, vuelves a "
        "estar suscrito.",
        "bad": "Esta dirección solo acepta el botón de baja. Abre el enlace del correo y pulsa "
        "el botón.",
        "busy": "Demasiadas solicitudes. Inténtalo de nuevo en un minuto.",
        "later": "Ahora no podemos atender tu solicitud. Inténtalo de nuevo en unos minutos.",
    },
}

_PAGE = Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>
  body { margin: 0; padding: 24px 16px; background: #f4f4f7; color: #222222;
         font-family: Helvetica, Arial, sans-serif; }
  main { max-width: 480px; margin: 0 auto; background: #ffffff; border-radius: 8px;
         padding: 24px; font-size: 16px; line-height: 1.5; }
  h1 { font-size: 22px; margin: 0 0 16px 0; color: #6b2580; }
  button { min-height: 44px; min-width: 44px; padding: 0 20px; font-size: 16px; border: 0;
           border-radius: 6px; background: #6b2580; color: #ffffff; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p>{{ text }}</p>
{% if button %}<form method="post" action="{{ action }}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
{% if question %}<p>{{ question }}</p>{% endif %}
<button type="submit">{{ button }}</button>
</form>{% endif %}
</main>
</body>
</html>
"""
)


def _texts(locale: str | None) -> tuple[str, dict[str, str]]:
    """The page language for ``locale`` and its texts (Swiss German spells ß as ss)."""
    parts = (locale or "").lower().replace("_", "-").split("-")
    language = parts[0] if parts[0] in TEXTS else "en"
    texts = TEXTS[language]
    if language == "de" and "ch" in parts[1:]:
        texts = {name: text.replace("ß", "ss") for name, text in texts.items()}
    return language, texts


def page(
    locale: str | None,
    company: str,
    title: str,
    text: str,
    *,
    status: int = 200,
    button: str = "",
    question: str = "",
    action: str = "",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """One page in the reader's language; ``title``, ``text``, ``button`` and ``question`` name
    entries of :data:`TEXTS`."""
    language, texts = _texts(locale)
    html = _PAGE.render(
        lang=language,
        title=texts[title],
        text=texts[text].format(company=company),
        button=texts[button] if button else "",
        question=texts[question] if question else "",
        action=action,
    )
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


class RateLimit:
    """At most ``per_minute`` requests per client in any minute (a sliding count per client,
    kept for the :data:`MAX_RATE_LIMITED_CLIENTS` most recent clients)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.seen: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = self.clock()
        recent = [t for t in self.seen.pop(client, []) if now - t < 60.0]
        allowed = len(recent) < self.per_minute
        if allowed:
            recent.append(now)
        self.seen[client] = recent
        while len(self.seen) > MAX_RATE_LIMITED_CLIENTS:
            self.seen.popitem(last=False)
        return allowed


def _is_one_click(body: bytes, content_type: str) -> bool:
    """Does the body say ``List-Unsubscribe=One-Click`` (form-encoded, or multipart)?"""
    if content_type.startswith("multipart/form-data"):
        return b'name="List-Unsubscribe"' in body and ONE_CLICK.encode() in body
    fields = parse_qs(body.decode("ascii", "replace"), max_num_fields=8)
    return ONE_CLICK in fields.get("List-Unsubscribe", [])


def pages_path(settings: Settings) -> str:
    """Where the pages are served: the path of ``CRM_UNSUBSCRIBE_URL`` (``/unsubscribe``)."""
    return urlsplit(settings.effective_unsubscribe_url).path.rstrip("/") or "/unsubscribe"


def unsubscribe_routes(runtime: Runtime) -> list[Route]:
    """The routes of the unsubscribe pages, under :func:`pages_path`."""
    settings = runtime.settings
    base = pages_path(settings)
    company = settings.company_name
    limit = RateLimit(UNSUBSCRIBE_REQUESTS_PER_MINUTE)
    reported: dict[str, float] = {}

    def once_a_minute(kind: str, message: str, *args: object) -> None:
        # A burst of bad requests must not become a burst of log lines.
        now = time.monotonic()
        if now - reported.get(kind, -60.0) >= 60.0:
            reported[kind] = now
            log.warning(message, *args)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def later(locale: str | None) -> HTMLResponse:
        return page(
            locale, company, "title", "later", status=503,
            headers={"Retry-After": str(INTAKE_RETRY_AFTER_S)},
        )  # fmt: skip

    def address_of(opt_out: OptOut) -> str | None:
        if opt_out.address is not None:
            return opt_out.address
        # A token of mail sent before tokens named the address: the customer's address now.
        customer = runtime.source.get("customer", opt_out.customer_id or "")
        email = customer["email"] if customer is not None else None
        return str(email) if email else None

    def opt_out_of(token: str) -> OptOut | None:
        try:
            return runtime.unsubscriber.verify(token)
        except UnsubscribeTokenError as exc:
            once_a_minute("token", "unsubscribe: a token was refused (%s)", exc.reason)
            return None

    def unsubscribe(token: str) -> None:
        opt_out = opt_out_of(token)
        if opt_out is None or opt_out.kind != MARKETING:
            return  # a forged token, or a preview test copy: nothing to do, the same answer
        address = address_of(opt_out)
        if address is None:
            return
        runtime.suppression.add(
            address, UNSUBSCRIBED, now=utc_now(), key="unsubscribe", scope=MARKETING_ONLY,
            event=change.UNSUBSCRIBED, source=change.ONE_CLICK,
        )  # fmt: skip
        log.info("unsubscribe: an address left marketing mail")

    def resubscribe(token: str) -> None:
        opt_out = opt_out_of(token)
        if opt_out is None or opt_out.kind != MARKETING:
            return
        address = address_of(opt_out)
        entry = runtime.suppression.entry(address) if address else None
        recent = entry is not None and utc_now() - entry.at <= RESUBSCRIBE_WITHIN
        if entry is not None and recent and entry.reason == UNSUBSCRIBED:
            runtime.suppression.remove(
                entry.address,
                reason=RESUBSCRIBED_REASON,
                event=change.RESUBSCRIBED,
                source=change.ONE_CLICK,
            )
            log.info("unsubscribe: an address came back to marketing mail")

    async def confirm(request: Request) -> HTMLResponse:
        token = request.path_params["token"]
        locale = unverified_locale(token)
        if not limit.allow(client_of(request)):
            return page(locale, company, "title", "busy", status=429)
        return page(locale, company, "title", "ask", button="button", action=f"{base}/{token}")

    async def one_click(request: Request) -> HTMLResponse:
        token = request.path_params["token"]
        locale = unverified_locale(token)
        if not limit.allow(client_of(request)):
            once_a_minute(
                "rate", "unsubscribe: requests over the limit from %s", client_of(request)
            )
            return page(locale, company, "title", "busy", status=429)
        body = await read_limited(request, MAX_UNSUBSCRIBE_BODY_BYTES)
        if body is None:
            return page(locale, company, "title", "bad", status=413)
        if not _is_one_click(body, request.headers.get("content-type", "")):
            return page(locale, company, "title", "bad", status=400)
        try:
            await run_in_threadpool(unsubscribe, token)
        except (redis.RedisError, SourceUnavailableError) as exc:
            log.error("unsubscribe not recorded, try again later: %s", exc)
            return later(locale)
        return page(
            locale, company, "done_title", "done",
            button="undo_button", question="undo", action=f"{base}/{token}/undo",
        )  # fmt: skip

    async def undo(request: Request) -> HTMLResponse:
        token = request.path_params["token"]
        locale = unverified_locale(token)
        if not limit.allow(client_of(request)):
            return page(locale, company, "title", "busy", status=429)
        if await read_limited(request, MAX_UNSUBSCRIBE_BODY_BYTES) is None:
            return page(locale, company, "title", "bad", status=413)
        try:
            await run_in_threadpool(resubscribe, token)
        except (redis.RedisError, SourceUnavailableError) as exc:
            log.error("re-subscribe not recorded, try again later: %s", exc)
            return later(locale)
        return page(locale, company, "undone_title", "undone")

    return [
        Route(f"{base}/{{token}}", confirm, methods=["GET"]),
        Route(f"{base}/{{token}}", one_click, methods=["POST"]),
        Route(f"{base}/{{token}}/undo", undo, methods=["POST"]),
    ]
