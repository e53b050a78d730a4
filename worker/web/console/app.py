"""The console's web app: logins, sessions, CSRF, security headers and the pages' routes.

Every page needs a login except ``/login``; a GET without one is sent to the login page, a
POST without one (or without the session's CSRF token) is answered ``403``. Changing a rule,
retrying deliveries and sending test copies need the ``editor`` role. Logins are rate-limited
per client and per user name. No page runs a script: the Content-Security-Policy allows none,
and a message's HTML is shown in a sandboxed frame whose own policy loads nothing remote.

Example::

    app = create_console_app(Runtime(load_settings()))
    uvicorn.run(app, host="127.0.0.1", port=8090)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import redis
import uvicorn
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.authoring.preview import send_test_copy
from worker.authoring.rule_edit import edit_rule
from worker.constants import (
    CONSOLE_FORECAST_TTL,
    CONSOLE_LOGINS_PER_MINUTE,
    CONSOLE_MAX_UPCOMING_DAYS,
    CONSOLE_SESSION_TTL,
    MAX_CONSOLE_FORM_BYTES,
    RULE_BACKUP_FOLDER,
)
from worker.errors import (
    AddressError,
    DeliveryError,
    PreviewError,
    SourceError,
    TemplateError,
)
from worker.localtime import parse_instant, utc_now
from worker.rules.models import parse_duration
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.console import pages
from worker.web.console.sessions import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    new_token,
    same_token,
)
from worker.web.console.users import ConsoleUser, ConsoleUsers
from worker.web.reading import read_limited
from worker.web.server import ServerLimits, descriptor_limit, server_config, throttled_logs
from worker.web.unsubscribe_pages import RateLimit

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STYLESHEET = HERE / "static" / "console.css"

#: Every console answer: scripts from nowhere, everything else only from the console itself,
#: never framed by another site, never cached, no referrer to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
        "frame-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: A message's HTML part, framed by the preview page: no script, nothing loaded from
#: anywhere (remote images would tell the sender the preview was opened), a sandbox.
MESSAGE_FRAME_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
    ),
    "X-Frame-Options": "SAMEORIGIN",
}
HSTS = "max-age=31536000"
#: Days /upcoming shows when ?days= is not given.
DEFAULT_UPCOMING_DAYS = 7
#: How far back /deliveries reads when ?since= is not given.
DEFAULT_DELIVERIES_SINCE = "7d"

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """Adds :data:`PAGE_HEADERS` (and HSTS behind HTTPS) to every answer that does not set its
    own, whatever route or error produced it."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.extra = {**PAGE_HEADERS, **({"Strict-Transport-Security": HSTS} if https else {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.extra.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class _Forecast:
    """/rules's count of the next 30 days' sends per rule, and when it was made."""

    counts: Counter[str] = field(default_factory=Counter)
    at: datetime | None = None


def _safe_next(target: str | None) -> str:
    """Where to go after the login: a path of the console only (never another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/rules"


def _since(text: str) -> datetime:
    try:
        return utc_now() - parse_duration(text)
    except ValueError:
        return parse_instant(text)


def create_console_app(runtime: Runtime) -> Starlette:
    """The console over ``runtime`` (its Redis holds logins and sessions)."""
    settings = runtime.settings
    users = ConsoleUsers(runtime.redis)
    sessions = Sessions(runtime.redis)
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
    # The runtime's parts (rule catalog, template cache) are shared by every request: one at
    # a time. The console serves a few people, not the internet.
    lock = threading.Lock()
    by_client = RateLimit(CONSOLE_LOGINS_PER_MINUTE)
    by_name = RateLimit(CONSOLE_LOGINS_PER_MINUTE)
    backup_dir = settings.data_dir / RULE_BACKUP_FOLDER
    forecast = _Forecast()
    stylesheet = STYLESHEET.read_bytes()

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def locked() -> T:
            with lock:
                return fn(*args, **kwargs)

        return await run_in_threadpool(locked)

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        user: ConsoleUser | None = getattr(request.state, "user", None)
        session: Session | None = getattr(request.state, "session", None)
        context.setdefault("message", "")
        html = env.get_template(name).render(
            user=user,
            csrf=session.csrf if session else context.pop("csrf", ""),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def problem(request: Request, status: int, text: str) -> HTMLResponse:
        return render(request, "message.html", status, title=str(status), text=text)

    async def read_form(request: Request) -> dict[str, str] | None:
        body = await read_limited(request, MAX_CONSOLE_FORM_BYTES)
        if body is None:
            return None
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}

    def page(handler: Handler, *, editor: bool = False) -> Handler:
        """``handler`` behind the login (and the CSRF token, for a POST)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await guarded(request)
            except redis.RedisError as exc:
                log.warning("console: Redis unavailable: %s", exc)
                return problem(request, 503, "Redis is unavailable; try again in a minute.")
            except SourceError as exc:
                return problem(request, 503, f"The CRM data cannot be read: {exc}")

        async def guarded(request: Request) -> Response:
            session = await call(sessions.get, request.cookies.get(SESSION_COOKIE))
            user = await call(users.get, session.user) if session else None
            if session is None or user is None:
                if request.method == "GET":
                    target = quote(request.url.path, safe="/")
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                return problem(request, 403, "You are not logged in (or the session ended).")
            request.state.user, request.state.session = user, session
            if request.method == "POST":
                form = await read_form(request)
                if form is None:
                    return problem(request, 413, "The form is too large.")
                if not same_token(form.get(CSRF_FIELD), session.csrf):
                    return problem(request, 403, "The form is stale or not from this console.")
                if editor and not user.editor:
                    return problem(request, 403, "Only an editor may do this.")
                request.state.form = form
            return await handler(request)

        return endpoint

    # -- login ---------------------------------------------------------------------------

    def cookie(response: Response, name: str, value: str, max_age: int, path: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=path,
            httponly=True,
            samesite="lax",
            secure=settings.console_https,
        )

    def login_form(request: Request, status: int = 200, message: str = "") -> Response:
        token = new_token()
        response = render(
            request,
            "login.html",
            status,
            csrf=token,
            message=message,
            next=_safe_next(request.query_params.get("next")),
        )
        cookie(response, LOGIN_COOKIE, token, 3600, "/login")
        return response

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return login_form(request)
        client = request.client.host if request.client else "?"
        if not by_client.allow(client):
            return login_form(request, 429, "Too many attempts. Wait a minute and try again.")
        form = await read_form(request)
        if form is None:
            return problem(request, 413, "The form is too large.")
        if not same_token(form.get(CSRF_FIELD), request.cookies.get(LOGIN_COOKIE)):
            return problem(request, 403, "The login form is stale; open the login page again.")
        name = form.get("name", "").strip()
        if not by_name.allow(name.lower()):
            return login_form(request, 429, "Too many attempts. Wait a minute and try again.")
        try:
            user = await run_in_threadpool(users.verify, name, form.get("password", ""))
            session = await call(sessions.open, user.name) if user is not None else None
        except redis.RedisError as exc:
            log.warning("console: Redis unavailable: %s", exc)
            return problem(request, 503, "Redis is unavailable; try again in a minute.")
        if user is None or session is None:
            log.warning("console: failed login for %r from %s", name[:64], client)
            return login_form(request, 401, "Wrong name or password.")
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        cookie(
            response, SESSION_COOKIE, session.token, int(CONSOLE_SESSION_TTL.total_seconds()), "/"
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request) -> Response:
        await call(sessions.close, request.state.session.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- pages -----------------------------------------------------------------------------

    async def home(request: Request) -> Response:
        return RedirectResponse("/rules", status_code=303)

    async def rules(request: Request) -> Response:
        now = utc_now()
        if forecast.at is None or now - forecast.at > CONSOLE_FORECAST_TTL:
            forecast.counts = await call(pages.forecast, runtime, now)
            forecast.at = now
        rows, template_problems = await call(pages.rules_overview, runtime, now, forecast.counts)
        return render(
            request,
            "rules.html",
            rows=rows,
            template_problems=template_problems,
            forecast_at=f"{forecast.at:%H:%M} UTC",
        )

    async def rule(request: Request) -> Response:
        rule_id = request.path_params["rule_id"]
        path = await call(pages.find_rule_file, runtime, rule_id)
        if path is None:
            return problem(request, 404, f"There is no rule {rule_id!r} in the rules folder.")
        shown = await call(pages.rule_page, runtime, path)
        if request.method == "GET":
            saved = "saved" in request.query_params
            message = "Saved. The running workers use it from their next pass." if saved else ""
            return render(request, "rule.html", page=shown, lines=shown.lines(), message=message)
        form: dict[str, str] = request.state.form
        text = form.get("text", "")
        edit = await call(
            edit_rule,
            path,
            text,
            seen=form.get("digest", ""),
            backup_dir=backup_dir,
            now=utc_now(),
            renderer=runtime.renderer,
            source=runtime.source,
            webhooks=settings.webhooks.keys(),
        )
        if edit.saved:
            forecast.at = None  # the counts of the next 30 days follow the saved rule
            log.info("console: %s saved %s (backup %s)", request.state.user.name, path, edit.backup)
            written = await call(
                lambda: (runtime.catalog.refresh(), pages.written_rules(runtime))[1]
            )
            new_id = pages.rule_id_of(path, written)
            return RedirectResponse(f"/rules/{quote(new_id)}?saved=1", status_code=303)
        if edit.stale:
            message = (
                "Not saved: the file changed since you opened it. Your text is in the editor; "
                "the file as it is now is shown above it."
            )
            return render(
                request, "rule.html", 409, page=shown, lines=shown.lines(), message=message,
                draft=text,
            )  # fmt: skip
        # Beside the lines: the file's own problems; the others (a template, another rule
        # file with the same id) are listed above them.
        here = [p for p in edit.problems if p.path == path]
        draft_lines = pages.annotated_lines(text, here)
        return render(
            request,
            "rule.html",
            422,
            page=shown,
            lines=draft_lines,
            problems=edit.problems,
            elsewhere=[p for p in edit.problems if p.path != path],
            draft=text,
            message=f"Not saved: {len(edit.problems)} problem(s). Fix them and save again.",
        )

    async def upcoming(request: Request) -> Response:
        raw = request.query_params.get("days", str(DEFAULT_UPCOMING_DAYS))
        if not raw.isdigit() or not 1 <= int(raw) <= CONSOLE_MAX_UPCOMING_DAYS:
            return problem(
                request, 400, f"days must be a whole number from 1 to {CONSOLE_MAX_UPCOMING_DAYS}"
            )
        days = int(raw)
        now = utc_now()
        found = await call(pages.upcoming_for, runtime, now, now + timedelta(days=days))
        rule_ids = sorted({rule_id for _, rule_id in found.days})
        dates = sorted({day for day, _ in found.days})
        return render(
            request, "upcoming.html", days=days, found=found, rule_ids=rule_ids, dates=dates
        )

    async def customer_lookup(request: Request) -> Response:
        wanted = request.query_params.get("id", "").strip()
        if not wanted:
            return render(request, "message.html", title="Customer", text="Enter a customer id.")
        return RedirectResponse(f"/customers/{quote(wanted, safe='')}", status_code=303)

    async def customer(request: Request) -> Response:
        customer_id = request.path_params["customer_id"]
        now = preview_now(request)
        if now is None:
            return problem(request, 400, "now must be an ISO 8601 instant: 2026-03-14T10:00:00Z")
        found = await call(pages.customer_page, runtime, customer_id, now)
        if not found.known:
            return problem(request, 404, f"Customer {customer_id!r} is not in the CRM data.")
        shown = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        return render(request, "customer.html", found=found, now=shown)

    def preview_now(request: Request, form: dict[str, str] | None = None) -> datetime | None:
        raw = (form or {}).get("now") or request.query_params.get("now") or ""
        if not raw:
            return utc_now()
        try:
            return parse_instant(raw)
        except ValueError:
            return None

    async def preview(request: Request) -> Response:
        return await _preview(request, "")

    async def _preview(request: Request, message: str) -> Response:
        rule_id = request.path_params["rule_id"]
        customer_id = request.path_params["customer_id"]
        form = getattr(request.state, "form", None)
        now = preview_now(request, form)
        if now is None:
            return problem(
                request, 400, "now must be an ISO 8601 instant, e.g. 2026-03-14T10:00:00Z"
            )
        try:
            shown, skips = await call(pages.previews, runtime, rule_id, customer_id, now)
        except PreviewError as exc:
            return problem(request, 404, str(exc))
        except TemplateError as exc:
            return problem(request, 422, f"A template fails: {exc}")
        return render(
            request,
            "preview.html",
            rule_id=rule_id,
            customer_id=customer_id,
            now=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            shown=shown,
            skips=skips,
            message=message,
        )

    async def preview_html(request: Request) -> Response:
        rule_id = request.path_params["rule_id"]
        customer_id = request.path_params["customer_id"]
        now = preview_now(request)
        raw = request.query_params.get("n", "0")
        if now is None or not raw.isdigit():
            return Response("bad request", status_code=400, media_type="text/plain")
        try:
            shown, _ = await call(pages.previews, runtime, rule_id, customer_id, now)
        except (PreviewError, TemplateError) as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        mails = [item for item in shown if item.item.message is not None]
        if int(raw) >= len(mails):
            return Response("no such message", status_code=404, media_type="text/plain")
        message = mails[int(raw)].item.message
        assert message is not None
        return HTMLResponse(message.html, headers=MESSAGE_FRAME_HEADERS)

    async def send_test(request: Request) -> Response:
        user: ConsoleUser = request.state.user
        if not user.email:
            return await _preview(
                request,
                "Your login has no address: ask for `crm-worker console-user add "
                f"{user.name} --email ADDRESS`.",
            )
        rule_id = request.path_params["rule_id"]
        customer_id = request.path_params["customer_id"]
        now = preview_now(request, request.state.form) or utc_now()

        def send() -> list[str]:
            shown, _ = pages.previews(runtime, rule_id, customer_id, now)
            done = []
            for item in shown:
                if item.item.message is None:
                    continue
                receipt = send_test_copy(runtime.deliverer, item.item, user.email, utc_now())
                done.append(f"Test copy sent to {user.email}: {receipt.detail}")
            return done or ["This rule sends no mail to preview (webhook posts get no test copy)."]

        try:
            lines = await call(send)
        except (PreviewError, TemplateError, AddressError, DeliveryError) as exc:
            lines = [f"Test copy not sent: {exc}"]
        log.info("console: %s sent a test copy of %s", user.name, rule_id)
        return await _preview(request, " ".join(lines))

    async def deliveries(request: Request) -> Response:
        query = request.query_params
        rule_id = query.get("rule", "") or None
        state = query.get("state", "") or None
        since_text = query.get("since", "") or DEFAULT_DELIVERIES_SINCE
        until_text = query.get("until", "")
        try:
            since = _since(since_text)
            until = _since(until_text) if until_text else None
        except ValueError:
            return problem(
                request, 400, "since and until are durations back from now (24h, 7d) or instants"
            )
        if state is not None and state not in pages.LOG_STATES:
            return problem(request, 400, f"state must be one of {', '.join(pages.LOG_STATES)}")
        known = await call(lambda: sorted(rule.id for rule in runtime.catalog))
        if rule_id is not None and rule_id not in known:
            return problem(request, 400, f"There is no rule {rule_id!r}.")
        found = await call(
            pages.deliveries_page,
            runtime,
            since=since,
            until=until,
            rule=rule_id,
            state=state,
            now=utc_now(),
        )
        retried = query.get("retried", "")
        message = f"Queued {retried} delivery(ies) again." if retried.isdigit() else ""
        return render(
            request,
            "deliveries.html",
            found=found,
            rules=known,
            states=pages.LOG_STATES,
            rule=rule_id or "",
            state=state or "",
            since=since_text,
            until=until_text,
            message=message,
        )

    async def retry(request: Request) -> Response:
        rule_id = request.state.form.get("rule", "") or None
        known = await call(lambda: sorted(rule.id for rule in runtime.catalog))
        if rule_id is not None and rule_id not in known:
            return problem(request, 400, f"There is no rule {rule_id!r}.")
        keys = await call(runtime.retry_failed, rule_id=rule_id)
        log.info(
            "console: %s queued %d failed deliveries again", request.state.user.name, len(keys)
        )
        target = f"/deliveries?retried={len(keys)}"
        if rule_id:
            target += f"&rule={quote(rule_id)}"
        return RedirectResponse(target, status_code=303)

    async def style(request: Request) -> Response:
        return Response(stylesheet, media_type="text/css")

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/static/console.css", style),
        Route("/", page(home)),
        Route("/rules", page(rules)),
        Route("/rules/{rule_id}", page(rule), methods=["GET"]),
        Route("/rules/{rule_id}", page(rule, editor=True), methods=["POST"]),
        Route("/upcoming", page(upcoming)),
        Route("/customers", page(customer_lookup)),
        Route("/customers/{customer_id}", page(customer)),
        Route("/preview/{rule_id}/{customer_id}", page(preview)),
        Route("/preview/{rule_id}/{customer_id}/html", page(preview_html)),
        Route(
            "/preview/{rule_id}/{customer_id}/send",
            page(send_test, editor=True),
            methods=["POST"],
        ),
        Route("/deliveries", page(deliveries)),
        Route("/deliveries/retry", page(retry, editor=True), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders, https=settings.console_https)
    return app


def serve_console(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the console until SIGINT/SIGTERM, under the intake's server limits (connections,
    header and body deadlines, bounded shutdown: ``CRM_INTAKE_*``)."""
    host = host or settings.console_host
    port = port or settings.console_port
    limits = ServerLimits.from_settings(settings).within_descriptors(descriptor_limit())
    runtime = Runtime(settings)
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        app = create_console_app(runtime)
        if not ConsoleUsers(runtime.redis).all():
            announce("note: no console logins yet: crm-worker console-user add NAME --role editor")
        shown = f"[{host}]" if ":" in host else host
        if not settings.console_https and host not in ("127.0.0.1", "localhost", "::1"):
            announce(
                "warning: passwords and sessions cross the network in clear text: serve the "
                "console behind HTTPS (a TLS proxy) and set CRM_CONSOLE_HTTPS=true"
            )
        announce(f"console on http://{shown}:{port}/ (log in; Ctrl-C to stop)")
        with throttled_logs():
            uvicorn.Server(server_config(app, host=host, port=port, limits=limits)).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        runtime.close()


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)
