"""``crm-worker``: the command line. Thin: parse, call the package, print.

Exit codes: 0 success, 1 problems found (``check``) or deliveries failed, 2 usage or
configuration error, 3 a service (Redis, the CRM data) is unreachable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.errors import (
    AddressError,
    ConfigError,
    CrmWorkerError,
    DeliveryError,
    EventError,
    IntakeError,
    PreviewError,
    SourceError,
    TemplateError,
)
from worker.events import default_event_id
from worker.explanation import Explainer
from worker.intake import post_event, serve
from worker.localtime import parse_instant, utc_now
from worker.planning import PlannedDelivery, Skip, plan
from worker.preview import Preview, build_previews, describe, send_test_copy
from worker.rules.loader import rule_json_schema
from worker.runtime import Runtime
from worker.settings import Settings, load_settings
from worker.validation import check_all

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 instant; without an offset it is UTC."""

    name = "instant"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_instant(str(value))
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 instant, e.g. 2026-03-14T10:00:00Z", param, ctx
            )


NOW_OPTION = click.option(
    "--now", type=Instant(), default=None, help="Pretend it is this instant (default: now)."
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_CONFIG)


def _runtime(ctx: click.Context) -> Runtime:
    runtime = Runtime(_settings())
    ctx.call_on_close(runtime.close)
    return runtime


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """CRM messaging automation worker.

    \b
    Examples:
      crm-worker check                                  validate rules and templates
      crm-worker plan --now 2026-03-14T10:00:00Z        who would get what at that instant
      crm-worker run --once                             one pass now, deliver, print a summary
      crm-worker run                                    scheduler + workers until Ctrl-C
      crm-worker preview birthday-greeting --customer 42   the real message for customer 42
      crm-worker plan --customer 42 --explain           per rule: why (not) for customer 42
      crm-worker event purchase.created --id P17        the CRM reports an event
      crm-worker intake                                 serve the CRM's events over HTTP

    Settings come from CRM_* environment variables or a .env file (see README).
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("dramatiq").setLevel(max(level, logging.WARNING))


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate rules and templates; one `path:line:col: message` line per problem.

    \b
    Exit 0 when everything is valid, 1 otherwise.
    Example:
      crm-worker check
    """
    runtime = _runtime(ctx)
    logging.getLogger("worker.rules.catalog").setLevel(logging.CRITICAL)  # printed below instead
    try:
        problems = check_all(
            runtime.catalog,
            runtime.renderer,
            runtime.source,
            webhooks=runtime.settings.webhooks.keys(),
        )
    except SourceError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    for problem in problems:
        out.print(str(problem), markup=False)
    if problems:
        err.print(f"{len(problems)} problem(s) found")
        sys.exit(EXIT_PROBLEMS)
    err.print(f"ok: {len(runtime.catalog)} rule(s), templates valid")


@cli.command("plan")
@NOW_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--rule", "rules", multiple=True, help="Only this rule id (repeatable).")
@click.option("--customer", "customer", help="Per rule, why this customer gets a message or not.")
@click.option("--explain", is_flag=True, help="Also list occurrences that are not sent, and why.")
@click.pass_context
def plan_command(
    ctx: click.Context,
    now: datetime | None,
    as_json: bool,
    rules: tuple[str, ...],
    customer: str | None,
    explain: bool,
) -> None:
    """Dry run: what a scheduler pass at --now would queue. Nothing is claimed or sent.

    \b
    Examples:
      crm-worker plan --now 2026-03-14T10:00:00Z
      crm-worker plan --now 2026-03-14T10:00:00Z --json | jq .to
      crm-worker plan --customer 42 --explain
    """
    runtime = _runtime(ctx)
    now = now or utc_now()
    runtime.catalog.refresh()
    rule_ids = frozenset(rules) if rules else None
    if customer is not None:
        _explain_customer(runtime, customer, now, rule_ids, as_json=as_json)
        return
    items = plan(
        runtime.catalog,
        runtime.source,
        now,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
        rule_ids=rule_ids,
        events=runtime.events,
    )
    planned: list[PlannedDelivery] = []
    skips: list[Skip] = []
    try:
        for item in items:
            if isinstance(item, PlannedDelivery):
                planned.append(item)
                if as_json:
                    out.print(json.dumps(_plan_json(item), ensure_ascii=False), markup=False)
            elif explain:
                skips.append(item)
                if as_json:
                    out.print(json.dumps(_skip_json(item), ensure_ascii=False), markup=False)
    except redis.RedisError as exc:  # event rules read the event store
        err.print(f"[red]error:[/] Redis unavailable (CRM events): {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        return
    table = Table(title=f"Due at {now.isoformat()}: {len(planned)} message(s)")
    for column in ("rule", "due at (UTC)", "channel", "to", "template", "locale", "key"):
        table.add_column(column)
    for item in planned:
        table.add_row(
            item.rule_id,
            item.due_at.strftime("%Y-%m-%d %H:%M"),
            item.action.channel,
            item.to,
            item.action.template,
            item.locale or "",
            item.key,
        )
    out.print(table)
    if skips:
        reasons = Table(title="Not sent")
        for column in ("rule", "record", "reason"):
            reasons.add_column(column)
        for skip in skips:
            reasons.add_row(skip.rule_id, f"{skip.entity} {skip.record_id}", skip.reason)
        out.print(reasons)


def _explain_customer(
    runtime: Runtime,
    customer_id: str,
    now: datetime,
    rule_ids: frozenset[str] | None,
    *,
    as_json: bool,
) -> None:
    """Per rule, why the customer gets a message at ``now`` or not (read-only lookups)."""
    explainer = Explainer(
        catalog=runtime.catalog,
        source=runtime.source,
        ledger=runtime.ledger,
        contact_policy=runtime.contact_policy,
        events=runtime.events,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    )
    try:
        lines = list(explainer.explain(customer_id, now, rule_ids=rule_ids))
    except redis.RedisError as exc:
        err.print(f"[red]error:[/] Redis unavailable (ledger and cap lookups): {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        for line in lines:
            out.print(json.dumps(dataclasses.asdict(line), ensure_ascii=False), markup=False)
        return
    table = Table(title=f"Customer {customer_id} at {now.isoformat()}")
    for column in ("rule", "record", "verdict", "why", "to", "key"):
        table.add_column(column)
    for line in lines:
        table.add_row(line.rule_id, line.subject, line.verdict, line.reason, line.to, line.key)
    out.print(table)


def _plan_json(item: PlannedDelivery) -> dict[str, Any]:
    return {
        "rule": item.rule_id,
        "key": item.key,
        "channel": item.action.channel,
        "to": item.to,
        "due_at": item.due_at.isoformat().replace("+00:00", "Z"),
        "template": item.action.template,
        "locale": item.locale,
        "entity": item.occurrence.entity,
        "record_id": item.occurrence.record_id,
    }


def _skip_json(item: Skip) -> dict[str, Any]:
    return {
        "rule": item.rule_id,
        "skipped": True,
        "entity": item.entity,
        "record_id": item.record_id,
        "key": item.key or None,
        "reason": item.reason,
    }


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
    runtime = _runtime(ctx)
    if not once:
        if now is not None:
            raise click.UsageError("--now works with --once only")
        _serve(runtime, scheduler=True, worker=True)
        return
    try:
        summary = runtime.run_once(now or utc_now())
    except redis.RedisError as exc:
        err.print(f"[red]error:[/] Redis unavailable: {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    report = summary.report
    states: Counter[str] = summary.states
    out.print(
        f"pass at {report.now.isoformat()}: {len(report.queued)} queued, "
        f"{report.already_claimed} already handled before, {report.skipped_total} not due/skipped"
    )
    out.print(
        f"sent {states['sent']}, skipped {states['skipped']}, failed {states['failed']}, "
        f"retrying later {states['retrying']}"
    )
    settings = runtime.settings
    if states["sent"]:
        where = (
            f"SMTP {settings.smtp_host}:{settings.effective_smtp_port}"
            if settings.smtp_host
            else f"outbox {settings.effective_outbox_dir}/"
        )
        out.print(f"messages went to {where}", markup=False)
    if states["failed"]:
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
    runtime = _runtime(ctx)
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
    except redis.RedisError as exc:
        err.print(f"[red]error:[/] Redis unavailable: {exc}")
        sys.exit(EXIT_UNAVAILABLE)


def _post_event(url: str, body: dict[str, Any]) -> None:
    settings = _settings()
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
    serve(_settings(), host=host, port=port, announce=lambda line: err.print(line, markup=False))


@cli.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Only the scheduler (one active per Redis; more instances stand by).

    \b
    Example:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker scheduler
    """
    _serve(_runtime(ctx), scheduler=True, worker=False)


@cli.command()
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads.")
@click.pass_context
def worker(ctx: click.Context, threads: int | None) -> None:
    """Only workers: deliver queued messages. Run as many as you like, on any host.

    \b
    Example:
      CRM_REDIS_URL=redis://redis:6379/0 crm-worker worker --threads 8
    """
    runtime = _runtime(ctx)
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
    try:
        runtime.run_forever(stop, scheduler=scheduler, worker=worker)
    except redis.RedisError as exc:
        err.print(f"[red]error:[/] Redis unavailable: {exc}")
        sys.exit(EXIT_UNAVAILABLE)


@cli.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
def schema(output: Path | None) -> None:
    """Print (or write) the JSON Schema of rule files, for editor autocompletion.

    \b
    Example:
      crm-worker schema -o var/rule.schema.json
    """
    text = json.dumps(rule_json_schema(), indent=2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        click.echo(text)


@cli.command()
@click.argument("rule_id", metavar="RULE")
@click.option("--customer", "customer_id", required=True, help="Customer id in the CRM data.")
@NOW_OPTION
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the HTML part to this file (open it in a browser).",
)
@click.option("--send-to", "send_to", default=None, help="Send a test copy to this address.")
@click.pass_context
def preview(
    ctx: click.Context,
    rule_id: str,
    customer_id: str,
    now: datetime | None,
    html_file: Path | None,
    send_to: str | None,
) -> None:
    """Show the real message RULE sends to a customer: headers, subject, text and HTML.

    Same path as a delivery (fresh CRM record, condition, template in the customer's language),
    but nothing is claimed or sent, except a test copy with --send-to (outside the ledger, with
    its own Message-ID; its unsubscribe link does not unsubscribe the customer).

    \b
    Exit 0 when shown, 1 when the customer would not get it or a template fails,
    2 for an unknown rule or customer.
    Examples:
      crm-worker preview birthday-greeting --customer 42
      crm-worker preview birthday-greeting --customer 42 --html var/preview.html
      crm-worker preview birthday-greeting --customer 42 --send-to me@example.com
    """
    runtime = _runtime(ctx)
    now = now or utc_now()
    try:
        deliverer = runtime.deliverer
        items = build_previews(deliverer, rule_id, customer_id, now)
    except redis.RedisError as exc:  # the shared unsubscribe secret lives in Redis
        err.print(f"[red]error:[/] Redis unavailable: {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    except PreviewError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_CONFIG)
    except TemplateError as exc:
        err.print(f"[red]template error:[/] {exc}")
        sys.exit(EXIT_PROBLEMS)
    shown = [item for item in items if isinstance(item, Preview)]
    mails = [item for item in shown if item.message is not None]
    for item in items:
        if isinstance(item, Skip):
            err.print(f"not sent to customer {customer_id}: {item.reason}", markup=False)
            continue
        out.print(describe(item), markup=False)
    if html_file and mails and mails[0].message is not None:
        html_file.parent.mkdir(parents=True, exist_ok=True)
        html_file.write_text(mails[0].message.html, encoding="utf-8")
        err.print(f"wrote the HTML part to {html_file}", markup=False)
    if send_to and len(mails) < len(shown):
        err.print("note: webhook posts get no test copy (it would reach the real chat)")
    if send_to and mails:
        try:
            for item in mails:
                receipt = send_test_copy(deliverer, item, send_to, utc_now())
                err.print(f"test copy sent to {send_to}: {receipt.detail}", markup=False)
        except AddressError as exc:
            err.print(f"[red]error:[/] --send-to: {exc.reason}")
            sys.exit(EXIT_CONFIG)
        except DeliveryError as exc:
            err.print(f"[red]error:[/] test copy not sent: {exc}")
            sys.exit(EXIT_PROBLEMS)
    if len(shown) < len(items):
        sys.exit(EXIT_PROBLEMS)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(standalone_mode=True)
    except CrmWorkerError as exc:
        err.print(f"[red]error:[/] {exc}", markup=True)
        sys.exit(EXIT_UNAVAILABLE if isinstance(exc, SourceError) else EXIT_CONFIG)
