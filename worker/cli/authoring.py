"""Commands for the people who write rules and templates: check, plan, schema, preview."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import redis
from rich.table import Table

from worker.authoring.preview import Preview, build_previews, describe, send_test_copy
from worker.authoring.validation import check_all, check_warnings
from worker.cli.common import (
    EXIT_CONFIG,
    EXIT_PROBLEMS,
    EXIT_UNAVAILABLE,
    NOW_OPTION,
    cli,
    err,
    out,
    require_rules,
    runtime_for,
    usage_error,
)
from worker.constants import DELIVERY_BATCH_SIZE
from worker.errors import (
    AddressError,
    DeliveryError,
    PreviewError,
    SourceError,
    TemplateError,
)
from worker.localtime import describe_local, utc_now
from worker.planning.plan import PlannedDelivery, Skip, plan
from worker.records.delivery_state import DeliveryState, delivery_states
from worker.rules.loader import rule_json_schema
from worker.runtime import Runtime


@cli.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate rules and templates; one `path:line:col: message` line per problem.

    \b
    Exit 0 when everything is valid, 1 otherwise.
    Example:
      crm-worker check
    """
    runtime = runtime_for(ctx)
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
    texts: dict[Path, str] = {}
    for problem in problems:
        out.print(str(problem), markup=False)
        if problem.path not in texts:
            try:
                texts[problem.path] = problem.path.read_text(encoding="utf-8", errors="replace")
            except OSError:  # a folder, or gone since: the position alone must do
                texts[problem.path] = ""
        for line in problem.excerpt(texts[problem.path]):
            out.print(line, markup=False)
    if problems:
        err.print(f"{len(problems)} problem(s) found")
        sys.exit(EXIT_PROBLEMS)
    # Valid but likely not meant: printed, without failing the check.
    warnings = check_warnings(runtime.catalog, runtime.renderer, runtime.source)
    for warning in warnings:
        out.print(str(warning), markup=False)
    noted = f", {len(warnings)} warning(s)" if warnings else ""
    err.print(f"ok: {len(runtime.catalog)} rule(s), templates valid{noted}")


@cli.command("plan")
@NOW_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--rule", "rules", multiple=True, help="Only this rule id (repeatable).")
@click.option("--customer", "customer", help="Per rule, why this customer gets a message or not.")
@click.option("--explain", is_flag=True, help="Also list occurrences that are not sent, and why.")
@click.option(
    "--all", "show_all", is_flag=True, help="Also list messages the ledger is done with (sent …)."
)
@click.pass_context
def plan_command(
    ctx: click.Context,
    now: datetime | None,
    as_json: bool,
    rules: tuple[str, ...],
    customer: str | None,
    explain: bool,
    show_all: bool,
) -> None:
    """Dry run: what a scheduler pass at --now would queue. Nothing is claimed or sent.

    Each message shows where it stands in the ledger (new, queued, already sent on …) and
    whether its address is suppressed; messages the ledger is done with (sent, skipped, failed)
    are left out unless --all.

    \b
    Examples:
      crm-worker plan --now 2026-03-14T10:00:00Z
      crm-worker plan --now 2026-03-14T10:00:00Z --all
      crm-worker plan --now 2026-03-14T10:00:00Z --json | jq .to
      crm-worker plan --customer 42 --explain
    """
    runtime = runtime_for(ctx)
    now = now or utc_now()
    require_rules(runtime, rules)
    rule_ids = frozenset(rules) if rules else None
    if customer is not None:
        if show_all:
            usage_error("--all lists a whole plan; --customer already shows every rule")
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
    planned: list[tuple[PlannedDelivery, DeliveryState]] = []
    skips: list[Skip] = []
    done = 0
    try:
        for batch in _batches(items):
            due = [item for item in batch if isinstance(item, PlannedDelivery)]
            states = delivery_states(
                runtime.ledger, runtime.suppression, [(i.key, i.to) for i in due]
            )
            shown = iter(zip(due, states, strict=True))
            for item in batch:
                if isinstance(item, PlannedDelivery):
                    entry = next(shown)
                    if entry[1].final and not show_all:
                        done += 1
                        continue
                    planned.append(entry)
                    if as_json:
                        line = _plan_json(item, runtime) | entry[1].as_json()
                        out.print(json.dumps(line, ensure_ascii=False), markup=False)
                elif explain:
                    skips.append(item)
                    if as_json:
                        out.print(json.dumps(_skip_json(item), ensure_ascii=False), markup=False)
    except redis.RedisError as exc:  # the ledger, the suppression list, the event store
        err.print(f"[red]error:[/] Redis unavailable (ledger, CRM events): {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    if done:
        err.print(f"{done} message(s) already sent, skipped or failed not shown (use --all)")
    if as_json:
        return
    table = Table(title=f"Due at {now.isoformat()}: {len(planned)} message(s)")
    columns = ("rule", "due (customer's time)", "channel", "to", "template", "locale", "state")
    for column in (*columns, "key"):
        table.add_column(column)
    for item, state in planned:
        table.add_row(
            item.rule_id,
            describe_local(item.due_at, item.occurrence.zone or runtime.default_zone),
            item.action.channel,
            item.to,
            item.action.template,
            item.reader(runtime.default_zone, runtime.staff)[0] or "",
            state.describe(),
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


def _batches(
    items: Iterable[PlannedDelivery | Skip],
) -> Iterator[list[PlannedDelivery | Skip]]:
    """``items`` in runs of :data:`DELIVERY_BATCH_SIZE`: the ledger is asked once per run."""
    batch: list[PlannedDelivery | Skip] = []
    for item in items:
        batch.append(item)
        if len(batch) >= DELIVERY_BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _explain_customer(
    runtime: Runtime,
    customer_id: str,
    now: datetime,
    rule_ids: frozenset[str] | None,
    *,
    as_json: bool,
) -> None:
    """Per rule, why the customer gets a message at ``now`` or not (read-only lookups)."""
    explainer = runtime.explainer
    try:
        known = runtime.source.get("customer", customer_id) is not None
    except SourceError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    if not known:  # a typo would otherwise read as "no rule has anything for this customer"
        usage_error(f"customer {customer_id!r} is not in the CRM data")
    for note in explainer.data_notes(customer_id):
        err.print(f"note: {note}", markup=False)
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


def _plan_json(item: PlannedDelivery, runtime: Runtime) -> dict[str, Any]:
    zone = item.occurrence.zone or runtime.default_zone
    return {
        "rule": item.rule_id,
        "key": item.key,
        "channel": item.action.channel,
        "to": item.to,
        "due_at": item.due_at.isoformat().replace("+00:00", "Z"),
        "due_local": item.due_at.astimezone(zone).isoformat(),
        "timezone": zone.key,
        "template": item.action.template,
        "locale": item.reader(runtime.default_zone, runtime.staff)[0],
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
    help="Also write the HTML part to this file (open it in a browser); a rule's other mails "
    "go beside it as FILE.<send id>.html.",
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
    runtime = runtime_for(ctx)
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
    try:
        states = delivery_states(
            runtime.ledger,
            runtime.suppression,
            [(item.planned.key, item.planned.to) for item in shown],
        )
    except redis.RedisError as exc:
        err.print(f"[red]error:[/] Redis unavailable: {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    state_of = dict(zip((item.planned.key for item in shown), states, strict=True))
    for item in items:
        if isinstance(item, Skip):
            err.print(f"not sent to customer {customer_id}: {item.reason}", markup=False)
            continue
        out.print(describe(item, state_of[item.planned.key].describe()), markup=False)
    if html_file and mails:
        # Every mail of the rule (the customer's and, say, the account manager's alert): the
        # first in FILE, each other one beside it, named after its send step.
        html_file.parent.mkdir(parents=True, exist_ok=True)
        for n, item in enumerate(mails):
            path = html_file
            if n:
                step = item.planned.action.action_id
                path = html_file.with_name(f"{html_file.stem}.{step}{html_file.suffix}")
            assert item.message is not None
            path.write_text(item.message.html, encoding="utf-8")
            err.print(f"wrote the HTML part for {item.planned.to} to {path}", markup=False)
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
