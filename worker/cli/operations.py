"""Commands that run the worker: run, scheduler, worker, intake, event."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter
from datetime import datetime
from typing import Any

import click
from rich.markup import escape

from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_PROBLEMS,
    EXIT_UNAVAILABLE,
    NOW_OPTION,
    Instant,
    cli,
    err,
    load_or_exit,
    out,
    runtime_for,
)
from worker.errors import (
    EventError,
    IntakeError,
)
from worker.localtime import utc_now
from worker.planning.events import default_event_id
from worker.runtime import Runtime
from worker.web.intake import post_event, serve


@cli.command()
@click.option("--once", is_flag=True, help="One pass, deliver, print a summary, exit.")
@NOW_OPTION
@click.pass_context
def run(ctx: click.Context, once: bool, now: datetime | None) -> None:
    """Scheduler and workers in one process (the single-machine default).

    \b
    Examples:
      crm-worker run --once                              one pass now
      crm-worker run --once --now 2026-03-14T10:00:00Z   replay a day
      crm-worker run                                     until Ctrl-C / SIGTERM
    """
    runtime = runtime_for(ctx)
    if not once:
        if now is not None:
            raise click.UsageError("--now works with --once only")
        _serve(runtime, scheduler=True, worker=True)
        return
    summary = runtime.run_once(now or utc_now())
    report = summary.report
    states: Counter[str] = summary.states
    out.print(
        f"pass at {report.now.isoformat()}: {len(report.queued)} queued, "
        f"{report.already_claimed} already handled before, {report.skipped_total} not due/skipped"
    )
    out.print(
        f"sent {states['sent']}, skipped {states['skipped']}, failed {states['failed']}, "
        f"retrying later {states['retrying']}"
        + (f", unknown {states['unknown']}" if states["unknown"] else "")
    )
    if runtime.pause.remaining(utc_now()) is not None:
        err.print(
            "[red]sending is paused:[/] the mail relay refused us or cannot be reached; the log "
            "says why (`crm-worker resume` ends the pause once it is fixed)"
        )
    settings = runtime.settings
    if states["sent"]:
        where = (
            f"SMTP {settings.smtp_host}:{settings.effective_smtp_port}"
            if settings.smtp_host
            else f"outbox {settings.effective_outbox_dir}/"
        )
        out.print(f"messages went to {where}", markup=False)
    if states["failed"] or states["unknown"]:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.argument("event_type", metavar="TYPE")
@click.option("--id", "record_id", required=True, help="Id of the record (e.g. the purchase).")
@click.option("--data", default=None, help="JSON object; templates see it as event.data.")
@click.option("--event-id", default=None, help="The CRM's id of the event (repeats send once).")
@click.option("--at", type=Instant(), default=None, help="When it happened (default: now).")
@click.option("--deliver", is_flag=True, help="Also deliver the queued messages, then exit.")
@click.option("--post", "post_url", metavar="URL", help="Post it to a running `crm-worker intake`.")
@click.pass_context
def event(
    ctx: click.Context,
    event_type: str,
    record_id: str,
    data: str | None,
    event_id: str | None,
    at: datetime | None,
    deliver: bool,
    post_url: str | None,
) -> None:
    """Record a CRM event and queue what the `event` rules of TYPE send for it.

    The messages are queued at once (a running `crm-worker worker` delivers them; --deliver
    delivers them here); recording the same --event-id again sends nothing twice. With --post,
    the event goes to a running intake over HTTP instead (signed with CRM_INTAKE_SECRET or with
    the bearer CRM_INTAKE_TOKEN), exactly as the CRM posts it.

    \b
    Examples:
      crm-worker event purchase.created --id P17
      crm-worker event complaint.opened --id C9 --event-id crm-8812 --data '{"via": "phone"}'
      crm-worker event purchase.created --id P17 --at 2026-03-14T10:00:00Z --deliver
      crm-worker event purchase.created --id P17 --event-id crm-8813 --post http://127.0.0.1:8080
    """
    try:
        payload = json.loads(data) if data else {}
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/] --data is not JSON: {exc.msg} (column {exc.colno})")
        sys.exit(EXIT_CONFIG)
    if not isinstance(payload, dict):
        err.print('[red]error:[/] --data must be a JSON object, e.g. \'{"via": "phone"}\'')
        sys.exit(EXIT_CONFIG)
    if post_url is not None:
        if deliver:
            raise click.UsageError("--deliver cannot be used with --post (the intake queues)")
        body: dict[str, Any] = {"type": event_type, "record_id": record_id, "data": payload}
        body["id"] = event_id or default_event_id(event_type, record_id, at or utc_now())
        _post_event(post_url, body | ({"at": at.isoformat()} if at else {}))
        return
    runtime = runtime_for(ctx)
    try:
        worker = runtime.start_worker() if deliver else None
        try:
            taken = runtime.take_event(
                event_type, record_id, data=payload, event_id=event_id, at=at
            )
            out.print(f"recorded event {taken.event.id}: {event_type} {record_id}", markup=False)
            if not taken.rules:
                err.print(f"note: no rule reacts to {event_type} (trigger: event: type: …)")
                return
            out.print(f"queued {len(taken.queued)} message(s)", markup=False)
            if worker is not None:
                states = Counter(runtime.wait_for(taken.queued, timeout_s=600).values())
                out.print(
                    f"sent {states['sent']}, skipped {states['skipped']}, "
                    f"failed {states['failed']}",
                    markup=False,
                )
        finally:
            if worker is not None:
                worker.stop()
    except EventError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(EXIT_CONFIG)


def _post_event(url: str, body: dict[str, Any]) -> None:
    settings = load_or_exit()
    token, secret = settings.intake_token, settings.intake_secret
    try:
        answer = post_event(
            url,
            body,
            token=token.get_secret_value() if token else None,
            secret=secret.get_secret_value().encode("utf-8") if secret else None,
        )
    except IntakeError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        unreachable = exc.status is None or exc.status >= 500
        sys.exit(EXIT_UNAVAILABLE if unreachable else EXIT_CONFIG)
    queued = len(answer.get("queued") or [])
    out.print(f"{answer.get('status')} event {answer.get('id')}: queued {queued}", markup=False)


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default CRM_INTAKE_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="CRM_INTAKE_PORT.")
def intake(host: str | None, port: int | None) -> None:
    """Serve the event intake: the CRM POSTs events to /events; GET /health checks Redis.

    Needs CRM_INTAKE_TOKEN (bearer) or CRM_INTAKE_SECRET (HMAC signatures); see README
    "Event intake". Messages are queued for `crm-worker worker` processes to deliver.

    \b
    Examples:
      CRM_INTAKE_TOKEN=… crm-worker intake --host 0.0.0.0 --port 8080
      curl -fsS http://127.0.0.1:8080/health
    """
    serve(load_or_exit(), host=host, port=port, announce=lambda line: err.print(line, markup=False))


@cli.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Only the scheduler (one active per Redis; more instances stand by).

    \b
    Example:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker scheduler
    """
    _serve(runtime_for(ctx), scheduler=True, worker=False)


@cli.command()
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads.")
@click.pass_context
def worker(ctx: click.Context, threads: int | None) -> None:
    """Only workers: deliver queued messages. Run as many as you like, on any host.

    \b
    Example:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker worker --threads 8
    """
    runtime = runtime_for(ctx)
    if threads:
        runtime.settings = runtime.settings.model_copy(update={"worker_threads": threads})
    _serve(runtime, scheduler=False, worker=True)


def _serve(runtime: Runtime, *, scheduler: bool, worker: bool) -> None:
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        err.print(f"stopping ({signal.Signals(signum).name}) …")
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    roles = " and ".join(r for r, on in (("scheduler", scheduler), ("workers", worker)) if on)
    err.print(f"running {roles}; Ctrl-C to stop")
    runtime.run_forever(stop, scheduler=scheduler, worker=worker)
