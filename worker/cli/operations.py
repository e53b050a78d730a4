"""Commands that run the worker: run, scheduler, worker, intake, event, health."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from collections import Counter
from datetime import datetime
from typing import Any

import click
import redis
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
    usage_error,
)
from worker.constants import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_INTERVALS_OF_GRACE,
    SWEEP_INTERVALS_OF_GRACE,
)
from worker.embedded_redis import EmbeddedRedis, server_answers
from worker.errors import (
    CrmWorkerError,
    EventError,
    IntakeError,
)
from worker.localtime import utc_now
from worker.planning.events import default_event_id
from worker.processes import (
    CHILD_FLAG,
    ChildSpec,
    Supervisor,
    run_once_supervised,
    scheduler_child,
    usable_cpus,
    watch_parent,
    worker_child,
)
from worker.records.heartbeats import ROLES, Health, Role, check_health
from worker.runtime import Runtime

PROCESSES_OPTION = click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default CRM_WORKER_PROCESSES, else the usable CPUs).",
)
#: A supervised child runs in this process; the supervisor passes it with its own pid, which
#: the child watches (not for people).
CHILD_OPTION = click.option(
    CHILD_FLAG, "supervisor_pid", type=click.IntRange(min=1), default=None, hidden=True
)


@cli.command()
@click.option("--once", is_flag=True, help="One pass, deliver, print a summary, exit.")
@PROCESSES_OPTION
@NOW_OPTION
@click.pass_context
def run(ctx: click.Context, once: bool, processes: int | None, now: datetime | None) -> None:
    """Scheduler and worker processes together (the single-machine default): one worker
    process per usable CPU, each restarted if it dies.

    SIGTERM or Ctrl-C: the workers finish the batches they hold and stop (a Ctrl-C after
    that stops them at once; SIGTERM again keeps draining).

    \b
    Examples:
      crm-worker run --once                              one pass now
      crm-worker run --once --now 2026-03-14T10:00:00Z   replay a day
      crm-worker run --once --processes 1                one worker process
      crm-worker run                                     until Ctrl-C / SIGTERM
    """
    runtime = runtime_for(ctx)
    count = _process_count(runtime, processes)
    if not once:
        if now is not None:
            raise click.UsageError("--now works with --once only")
        children = [
            scheduler_child(
                log_flags=_log_flags(ctx), metrics_port=_scheduler_metrics(runtime, count)
            ),
            *_workers(ctx, runtime, count),
        ]
        _supervise(runtime, children, f"the scheduler and {_describe_workers(runtime, count)}")
        return
    supervisor = Supervisor(
        _workers(ctx, runtime, count),
        stop_timeout_s=runtime.settings.stop_timeout_s,
        fork_main=_child_main,
    )
    passing = threading.Event()
    stop, force = _stop_signals(interrupting=passing)
    try:
        summary = run_once_supervised(
            runtime, now or utc_now(), supervisor, stop=stop, force=force, passing=passing
        )
    except _Interrupted as exc:
        err.print(
            "stopped during the pass: what it queued is delivered by any running worker or the "
            "next run; what it claimed and had not queued is taken over by the sweeper and the "
            "next pass (`crm-worker status` shows it)"
        )
        sys.exit(128 + exc.signum)
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
        + "".join(
            f", still {state} {states[state]}"
            for state in ("claimed", "queued", "sending")
            if states[state]
        )
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
    unfinished = states["claimed"] + states["queued"] + states["sending"]
    if states["failed"] or states["unknown"] or unfinished:
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
    from worker.web.intake import post_event  # the web stack: only the commands that use it

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
    from worker.web.intake import serve  # the web stack: only the commands that use it

    serve(load_or_exit(), host=host, port=port, announce=lambda line: err.print(line, markup=False))


@cli.command()
@CHILD_OPTION
@click.pass_context
def scheduler(ctx: click.Context, supervisor_pid: int | None) -> None:
    """Only the scheduler (one active per Redis; more instances stand by).

    \b
    Example:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker scheduler
    """
    _serve(runtime_for(ctx), scheduler=True, worker=False, supervisor_pid=supervisor_pid)


@cli.command()
@PROCESSES_OPTION
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Threads per process.")
@CHILD_OPTION
@click.pass_context
def worker(
    ctx: click.Context, processes: int | None, threads: int | None, supervisor_pid: int | None
) -> None:
    """Only workers: deliver queued messages, one process per usable CPU (each restarted if it
    dies). Run as many as you like, on any host.

    SIGTERM or Ctrl-C: they finish the batches they hold and stop (a Ctrl-C after that stops
    them at once; SIGTERM again keeps draining).

    \b
    Examples:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker worker
      crm-worker worker --processes 4 --threads 1
    """
    runtime = runtime_for(ctx)
    if threads:
        runtime.settings = runtime.settings.model_copy(update={"worker_threads": threads})
    if supervisor_pid is not None:
        _serve(runtime, scheduler=False, worker=True, supervisor_pid=supervisor_pid)
        return
    count = _process_count(runtime, processes)
    _supervise(runtime, _workers(ctx, runtime, count), _describe_workers(runtime, count))


def _child_main() -> None:
    """A forked child runs the command line again, with its own arguments (``sys.argv``)."""
    from worker.cli import main  # the package imports this module: not at import time

    main()


def _process_count(runtime: Runtime, processes: int | None) -> int:
    return processes or runtime.settings.worker_processes or usable_cpus()


def _log_flags(ctx: click.Context) -> list[str]:
    """The -v/-q of this command, for its children."""
    params = ctx.find_root().params
    return ["-q"] if params.get("quiet") else ["-v"] * int(params.get("verbose") or 0)


def _workers(ctx: click.Context, runtime: Runtime, count: int) -> list[ChildSpec]:
    settings = runtime.settings
    return [
        worker_child(
            number,
            threads=settings.worker_threads,
            log_flags=_log_flags(ctx),
            metrics_port=settings.metrics_port,
        )
        for number in range(1, count + 1)
    ]


def _scheduler_metrics(runtime: Runtime, workers: int) -> int | None:
    """Under ``run``, the scheduler serves its metrics after the ``workers`` processes' ports
    (``--processes`` included: the port after the last worker's)."""
    port = runtime.settings.metrics_port
    return None if port is None else port + workers


def _describe_workers(runtime: Runtime, count: int) -> str:
    s = runtime.settings
    return (
        f"{count} worker process{'es' if count != 1 else ''} × {s.worker_threads} "
        f"thread{'s' if s.worker_threads != 1 else ''} × {s.smtp_connections} SMTP connection"
        f"{'s' if s.smtp_connections != 1 else ''}"
    )


class _Interrupted(BaseException):
    """Raised in the main thread by a stop signal while the pass of ``run --once`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_signals(
    *, interrupting: threading.Event | None = None
) -> tuple[threading.Event, threading.Event]:
    """The first SIGINT or SIGTERM sets ``stop`` (drain); a SIGINT after it sets ``force`` (kill
    the children): a person at the terminal asked twice. A SIGTERM after it only says that the
    stop is under way: process managers (``timeout``, systemd, a ``kill`` of the process group)
    may send SIGTERM more than once, and each must keep draining.

    While ``interrupting`` is set (the pass of ``run --once``, which does not look at ``stop``),
    the first signal also raises :class:`_Interrupted` in the main thread, which runs the pass:
    it ends there and the workers drain as after any stop."""
    stop, force = threading.Event(), threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            if signum == signal.SIGINT:
                err.print(f"stopping now ({name} again): the worker processes are killed")
                force.set()
            else:
                err.print(
                    f"already stopping ({name} again): the worker processes finish the batches "
                    "they hold; Ctrl-C to stop at once"
                )
            return
        # Set before printing: a second signal that arrives during the print is a second one.
        stop.set()
        again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C"
        if interrupting is not None and interrupting.is_set():
            interrupting.clear()
            err.print(
                f"stopping ({name}) during the pass: the worker processes finish the batches "
                f"they hold; {again} to stop at once"
            )
            raise _Interrupted(signum)
        err.print(
            f"stopping ({name}): the worker processes finish the batches they hold; "
            f"{again} to stop at once"
        )

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    return stop, force


def _supervise(runtime: Runtime, children: list[ChildSpec], roles: str) -> None:
    """Run ``children`` under a supervisor until SIGTERM / Ctrl-C."""
    if runtime.settings.redis_url is None:
        # The embedded Redis stays up while children die and restart (each would otherwise
        # be its last user and stop it).
        runtime.redis  # noqa: B018
    supervisor = Supervisor(
        children, stop_timeout_s=runtime.settings.stop_timeout_s, fork_main=_child_main
    )
    stop, force = _stop_signals()
    err.print(f"running {roles}; Ctrl-C to stop")
    supervisor.serve(stop, force)


def _serve(
    runtime: Runtime, *, scheduler: bool, worker: bool, supervisor_pid: int | None = None
) -> None:
    """Run until SIGTERM / Ctrl-C, or as the child of ``supervisor_pid`` until it stops this
    process or disappears."""
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # Once or many times alike: this process has no children to kill, only work to finish.
        if supervisor_pid is None:
            name = signal.Signals(signum).name
            err.print(
                f"already stopping ({name} again) …" if stop.is_set() else f"stopping ({name}) …"
            )
        stop.set()

    if supervisor_pid is not None:
        # The supervisor decides what a Ctrl-C in the terminal means (the whole process group
        # gets it); it sends SIGTERM to drain. Without it, this process stops by itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch_parent(stop, supervisor_pid)
    else:
        signal.signal(signal.SIGINT, _stop)
        roles = " and ".join(r for r, on in (("scheduler", scheduler), ("workers", worker)) if on)
        err.print(f"running {roles}; Ctrl-C to stop")
    signal.signal(signal.SIGTERM, _stop)
    runtime.run_forever(stop, scheduler=scheduler, worker=worker)


@cli.command()
@click.argument("role", type=click.Choice(ROLES))
@click.option("--host", default=None, help="Whose heartbeat counts (default: this host's name).")
@click.option("--any-host", is_flag=True, help="A heartbeat from any host counts.")
def health(role: Role, host: str | None, any_host: bool) -> None:
    """Exit 0 when a ROLE process on this host wrote its heartbeat in Redis recently, else 1
    with one line saying why: the health check of a container or a service manager.

    Fresh means within 3 sweep intervals for workers (CRM_SWEEP_INTERVAL_S) and 30 s for the
    scheduler (leader or standby) and the intake. A Redis that cannot be reached is unhealthy
    too (exit 1, as Docker expects of a health check).

    \b
    Examples:
      crm-worker health worker             in a worker's container
      crm-worker health scheduler --any-host   is any scheduler alive?
    """
    if host is not None and any_host:
        usage_error("--host and --any-host contradict each other; give one")
    settings = load_or_exit()
    if role == "worker":
        fresh_s = settings.sweep_interval_s * SWEEP_INTERVALS_OF_GRACE
    else:
        fresh_s = HEARTBEAT_INTERVAL.total_seconds() * HEARTBEAT_INTERVALS_OF_GRACE
    if settings.redis_url is None and not server_answers(
        EmbeddedRedis(settings.data_dir).socket_path
    ):
        # Asking must not start the embedded Redis that nothing else runs.
        verdict = Health(False, f"the embedded Redis of {settings.data_dir} is not running")
        out.print(f"unhealthy: {verdict.reason}", markup=False)
        sys.exit(EXIT_PROBLEMS)
    runtime = Runtime(settings)
    try:
        verdict = check_health(
            runtime.redis,
            role,
            host=None if any_host else (host or socket.gethostname()),
            fresh_s=fresh_s,
            now=utc_now().timestamp(),
        )
    except (redis.RedisError, CrmWorkerError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        verdict = Health(False, f"Redis unreachable: {first}")
    finally:
        runtime.close()
    line = f"{'healthy' if verdict.ok else 'unhealthy'}: {verdict.reason}"
    out.print(line, markup=False)
    sys.exit(0 if verdict.ok else EXIT_PROBLEMS)
