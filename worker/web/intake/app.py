"""The intake's HTTP interface (ASGI, Starlette), served by uvicorn.

``POST /events`` takes one event (:mod:`worker.web.intake.body`) from a caller with credentials
(:mod:`worker.web.intake.auth`), records it and claims and queues what the ``event`` rules send for
it (:meth:`worker.runtime.Runtime.take_event`, the same as ``crm-worker event``), then answers:

====  =======================================================================================
202   recorded and its messages queued: ``{"status": "accepted", "id", "rules", "queued"}``
200   that event id was recorded before: ``{"status": "duplicate", …}``; nothing is sent twice
400   the body is not JSON (or nested too deep)  401  missing or wrong token / signature
404   any other path (a trailing slash too: no redirect that would echo the Host header)
408   headers or body not sent in time (:mod:`worker.web.server`)
413   the body is over MAX_INTAKE_BODY_BYTES     415  the body is not ``application/json``
422   a field is missing or wrong: ``{"error", "field"}`` names it
503   Redis is down, too many connections, or shutting down: nothing is acknowledged; retry
      after ``Retry-After`` seconds
====  =======================================================================================

The answer comes only once Redis holds the event and its claimed deliveries are on the queue,
so a CRM that retries every non-2xx answer loses no event. ``GET /health`` answers 200 while
Redis answers a ping, else 503 (no credentials needed: it says nothing about events). The
customers' unsubscribe pages are served beside them (:mod:`worker.web.unsubscribe_pages`).

Example (tests run it in a thread the same way)::

    app = create_app(Runtime(settings), IntakeAuth.from_settings(settings, "127.0.0.1"))
    limits = ServerLimits.from_settings(settings)
    uvicorn.Server(server_config(app, host="127.0.0.1", port=8080, limits=limits)).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker.constants import HEARTBEAT_INTERVAL, INTAKE_RETRY_AFTER_S, MAX_INTAKE_BODY_BYTES
from worker.errors import EventError, IntakeError, SourceUnavailableError
from worker.localtime import utc_now
from worker.records.heartbeats import beat, leave, process_name
from worker.runtime import Runtime, TakenEvent
from worker.settings import Settings
from worker.web.intake.auth import IntakeAuth
from worker.web.intake.body import EventBody, parse_event
from worker.web.reading import read_limited
from worker.web.server import ServerLimits, descriptor_limit, server_config, throttled_logs
from worker.web.unsubscribe_pages import pages_path, unsubscribe_routes

log = logging.getLogger(__name__)

EVENTS_PATH = "/events"
HEALTH_PATH = "/health"


def create_app(runtime: Runtime, auth: IntakeAuth) -> Starlette:
    """The intake app over ``runtime`` (its Redis, rules, CRM data and queue)."""
    runtime.redis  # noqa: B018 - open (or start the embedded) Redis once, not per request
    # Rule reloads and the scheduler's parts are not made for concurrent use: one event at a
    # time is recorded and queued (a few milliseconds each); requests wait in the thread pool.
    taking = threading.Lock()

    def take(event: EventBody) -> TakenEvent:
        # An event the CRM stamped is evaluated at the real time: one stamped ahead of the
        # intake's clock is not sent early (the scheduler's pass at that time queues it).
        # Unstamped, it happened as it is recorded, and is evaluated at that instant.
        with taking:
            return runtime.take_event(
                event.type,
                event.record_id,
                data=event.data,
                event_id=event.id,
                at=event.at,
                now=utc_now() if event.at else None,
            )

    async def post_event(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request)
            auth.verify(request.headers, body, now=time.time())
            event = parse_event(body, request.headers.get("content-type"), utc_now())
        except IntakeError as exc:
            return refusal(exc)
        try:
            taken = await run_in_threadpool(take, event)
        except EventError as exc:  # what the model cannot see, e.g. data too large once encoded
            return refusal(IntakeError(422, str(exc), field="data"))
        except redis.RedisError as exc:
            log.error("event %s not taken, Redis unavailable: %s", event.id, exc)
            return JSONResponse(
                {"error": "Redis unavailable; retry later (a retry never sends twice)"},
                status_code=503,
                headers={"Retry-After": str(INTAKE_RETRY_AFTER_S)},
            )
        except SourceUnavailableError as exc:
            # Recorded by now: the scheduler's next pass queues its messages (within grace).
            log.error("event %s recorded; its messages wait for the CRM data: %s", event.id, exc)
            waiting = {"status": "accepted", "id": event.id, "queued": [], "note": str(exc)}
            return JSONResponse(waiting, status_code=202)
        log.debug(
            "event %s (%s %s): %s, %d queued",
            taken.event.id,
            taken.event.type,
            taken.event.record_id,
            "new" if taken.new else "duplicate",
            len(taken.queued),
        )
        answer: dict[str, object] = {
            "status": "accepted" if taken.new else "duplicate",
            "id": taken.event.id,
            "rules": taken.rules,
            "queued": taken.queued,
        }
        return JSONResponse(answer, status_code=202 if taken.new else 200)

    async def health(request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(runtime.redis.ping)
        except redis.RedisError as exc:
            log.error("health: Redis unavailable: %s", exc)
            return JSONResponse({"status": "unavailable", "redis": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "redis": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The heartbeat is written from the event loop that serves requests: a loop that is
        # stuck stops beating, and `crm-worker health intake` says so.
        name = process_name()
        task = asyncio.create_task(_beat_forever(runtime, name))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await run_in_threadpool(leave, runtime.redis, "intake", name)

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route(EVENTS_PATH, post_event, methods=["POST"]),
            Route(HEALTH_PATH, health, methods=["GET"]),
            *unsubscribe_routes(runtime),
        ],
        # For every route's body, the unsubscribe pages' too: uncaught, it was an ERROR
        # traceback per hang-up.
        exception_handlers={ClientDisconnect: _connection_gone},
    )
    # Starlette answers '/events/' with a redirect to an absolute URL built from the Host
    # header, which anyone can set: a public app must not echo it. A wrong path is a 404.
    app.router.redirect_slashes = False
    return app


async def _beat_forever(runtime: Runtime, name: str) -> None:
    """Write this intake's heartbeat every ``HEARTBEAT_INTERVAL`` while it serves."""
    while True:
        # /health and the event endpoint say when Redis is down; no log line per beat.
        with contextlib.suppress(redis.RedisError):
            await run_in_threadpool(beat, runtime.redis, "intake", name, now=utc_now().timestamp())
        await asyncio.sleep(HEARTBEAT_INTERVAL.total_seconds())


async def _connection_gone(request: Request, exc: Exception) -> JSONResponse:
    # Nobody reads this answer; a client hanging up (or one cut off by a read deadline or at
    # shutdown) is no error of ours, and many at once are one throttled line
    # (worker.web.server.throttled_logs).
    log.warning("a connection closed before its request body was complete")
    return refusal(IntakeError(400, "the connection closed before the body was complete"))


def refusal(exc: IntakeError) -> JSONResponse:
    """The answer to a refused request: the status, what is wrong and, if known, where."""
    headers = {"WWW-Authenticate": 'Bearer realm="crm-intake"'} if exc.status == 401 else None
    return JSONResponse(
        {"error": exc.reason, "field": exc.field}, status_code=exc.status or 400, headers=headers
    )


async def _read_body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the limit, declared or not."""
    body = await read_limited(request, MAX_INTAKE_BODY_BYTES)
    if body is None:
        raise IntakeError(
            413, f"the body is over {MAX_INTAKE_BODY_BYTES} bytes; post ids and a small data object"
        )
    return body


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the intake until SIGINT/SIGTERM: in-flight requests may finish within
    ``CRM_INTAKE_SHUTDOWN_TIMEOUT_S``, then they are cancelled and the process exits.

    Raises :class:`~worker.errors.ConfigError` when it would run without credentials.
    """
    host = host or settings.intake_host
    port = port or settings.intake_port
    auth = IntakeAuth.from_settings(settings, host)
    wanted = ServerLimits.from_settings(settings)
    limits = wanted.within_descriptors(descriptor_limit())
    if limits != wanted:
        log.warning(
            "CRM_INTAKE_MAX_CONNECTIONS lowered from %d to %d: the process may open only %d "
            "files (raise it with ulimit -n)",
            wanted.max_connections,
            limits.max_connections,
            descriptor_limit(),
        )
    runtime = Runtime(settings)
    # uvicorn stops on SIGTERM, then raises the signal again for the handler it found: with the
    # default one the process died right there, before closing the runtime, and left the
    # embedded redis-server running. Leaving through ``finally`` closes it.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        app = create_app(runtime, auth)
        shown = f"[{host}]" if ":" in host else host
        pages = pages_path(settings)
        announce(
            f"event intake on http://{shown}:{port}{EVENTS_PATH} (health: {HEALTH_PATH}; "
            f"unsubscribe pages: {pages}/<token>)"
        )
        with throttled_logs():
            uvicorn.Server(server_config(app, host=host, port=port, limits=limits)).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        runtime.close()


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)
