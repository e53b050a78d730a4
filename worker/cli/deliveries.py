"""Commands for the operator's view of deliveries: report, retry-failed, suppress, resume."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click
from rich.table import Table

from worker.addresses import normalize_recipient
from worker.cli.common import (
    EXIT_PROBLEMS,
    NOW_OPTION,
    Since,
    cli,
    err,
    out,
    require_rules,
    runtime_for,
    usage_error,
)
from worker.delivery_log import summarize
from worker.errors import AddressError
from worker.localtime import utc_now


@cli.command()
@click.option("--since", type=Since(), default=None, help="From this instant or duration ago.")
@click.option("--rule", "rule_id", default=None, help="Only this rule id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def report(ctx: click.Context, since: datetime | None, rule_id: str | None, as_json: bool) -> None:
    """What happened to the deliveries: counts per rule and status, then every failed or
    unknown delivery with its reason and SMTP reply (from the delivery log in Redis).

    A delivery sent again on request counts once, by its latest outcome.
    Exit 0, or 1 when failed or unknown deliveries are listed.

    \b
    Examples:
      crm-worker report --since 24h
      crm-worker report --since 2026-03-14T00:00:00Z --rule birthday-greeting
      crm-worker report --since 7d --json | jq 'select(.kind == "failure")'
    """
    runtime = runtime_for(ctx)
    entries = list(runtime.delivery_log.read(since=since, rule=rule_id))
    if not entries:  # a rule deleted since still has its history; a typo has none
        require_rules(runtime, [rule_id])
    summary = summarize(entries)
    if as_json:
        for (rule, status), count in sorted(summary.counts.items()):
            line = {"kind": "count", "rule": rule, "status": status, "count": count}
            out.print(json.dumps(line), markup=False)
        for entry in summary.problems:
            out.print(json.dumps({"kind": "failure", **entry.as_json()}), markup=False)
    else:
        statuses = ("sent", "skipped", "failed", "unknown")
        title = f"Deliveries since {since.isoformat(timespec='seconds')}" if since else "Deliveries"
        table = Table(title=title)
        for column in ("rule", *statuses):
            table.add_column(column, justify="left" if column == "rule" else "right")
        for rule in sorted({rule for rule, _ in summary.counts}):
            table.add_row(rule, *(str(summary.counts[(rule, s)]) for s in statuses))
        out.print(table)
        if summary.problems:
            problems = Table(title="Failed and unknown")
            for column in ("at (UTC)", "status", "key", "recipient", "reason", "reply"):
                problems.add_column(column)
            for entry in summary.problems:
                problems.add_row(
                    entry.at.strftime("%Y-%m-%d %H:%M:%S"),
                    entry.status,
                    entry.key,
                    entry.recipient,
                    entry.reason,
                    entry.reply,
                )
            out.print(problems)
    if summary.problems:
        sys.exit(EXIT_PROBLEMS)


@cli.command("retry-failed")
@click.option("--rule", "rule_id", default=None, help="Only this rule id.")
@NOW_OPTION
@click.pass_context
def retry_failed(ctx: click.Context, rule_id: str | None, now: datetime | None) -> None:
    """Queue every failed or unknown delivery again (a running worker sends it).

    Each is reset in the ledger atomically, so running this twice queues nothing twice. The
    worker re-checks it like any delivery: a message past its rule's grace, an opted-out or
    suppressed address is skipped with the reason. An ``unknown`` delivery may already be in
    the inbox; it goes out again with the same Message-ID.

    \b
    Examples:
      crm-worker retry-failed
      crm-worker retry-failed --rule birthday-greeting
    """
    runtime = runtime_for(ctx)
    require_rules(runtime, [rule_id])
    keys = runtime.retry_failed(rule_id=rule_id, now=now)
    out.print(f"queued again: {len(keys)} deliveries", markup=False)
    for key in keys:
        out.print(f"  {key}", markup=False)


@cli.group()
def suppress() -> None:
    """The suppression list: addresses that never get mail again.

    \b
    Examples:
      crm-worker suppress list
      crm-worker suppress add someone@example.com --reason "asked by phone"
      crm-worker suppress remove someone@example.com
    """


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def suppress_list(ctx: click.Context, as_json: bool) -> None:
    """Every suppressed address, oldest first, with why and since when."""
    entries = list(runtime_for(ctx).suppression)
    if as_json:
        for e in entries:
            line = {"address": e.address, "reason": e.reason, "at": e.at.isoformat(), "key": e.key}
            out.print(json.dumps(line, ensure_ascii=False), markup=False)
        return
    table = Table(title=f"{len(entries)} suppressed address(es)")
    for column in ("address", "since (UTC)", "reason", "delivery"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.address, e.at.strftime("%Y-%m-%d %H:%M"), e.reason, e.key)
    out.print(table)


@suppress.command("add")
@click.argument("address")
@click.option("--reason", default="added by an operator", help="Why (shown in reports).")
@click.pass_context
def suppress_add(ctx: click.Context, address: str, reason: str) -> None:
    """Never send to ADDRESS again. Exit 2 when ADDRESS is not an address."""
    _require_address(address)
    runtime_for(ctx).suppression.add(address, reason, now=utc_now())
    out.print(f"suppressed {address}", markup=False)


def _require_address(address: str) -> None:
    # A typo here would otherwise sit in the list for ever and protect nobody.
    try:
        normalize_recipient(address)
    except AddressError as exc:
        usage_error(f"{address!r} is not an email address: {exc.reason}")


@suppress.command("remove")
@click.argument("address")
@click.pass_context
def suppress_remove(ctx: click.Context, address: str) -> None:
    """Allow ADDRESS again. Exit 1 when it was not suppressed, 2 when it is not an address."""
    _require_address(address)
    if not runtime_for(ctx).suppression.remove(address):
        err.print(f"{address} was not suppressed", markup=False)
        sys.exit(EXIT_PROBLEMS)
    out.print(f"removed {address} from the suppression list", markup=False)


@cli.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """End a send pause now (after fixing SMTP credentials or the relay's policy).

    Says so when sending was not paused (exit 0: nothing needed doing).

    \b
    Example:
      crm-worker resume
    """
    if runtime_for(ctx).pause.clear():
        out.print("sending resumed", markup=False)
    else:
        out.print("sending was not paused; nothing to resume", markup=False)
