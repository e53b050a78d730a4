"""Commands for the operator's view of deliveries: report, status, retry-failed, suppress,
resume."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

import click
import redis
from rich.markup import escape
from rich.table import Table

from worker.cli.common import (
    EXIT_PROBLEMS,
    EXIT_UNAVAILABLE,
    NOW_OPTION,
    Since,
    cli,
    err,
    out,
    require_rules,
    runtime_for,
    usage_error,
)
from worker.connections import describe_redis
from worker.constants import SWEEP_INTERVALS_OF_GRACE
from worker.errors import AddressError
from worker.localtime import utc_now
from worker.messages.addresses import normalize_recipient
from worker.records.backlog import STATE_NAMES, Backlog, read_backlog
from worker.records.delivery_log import Summary, summarize
from worker.records.status import SystemStatus, read_status
from worker.records.suppression_events import OPERATOR, SUPPRESSED, UNSUPPRESSED
from worker.runtime import Runtime


@cli.command()
@click.option("--since", type=Since(), default=None, help="From this instant or duration ago.")
@click.option("--rule", "rule_id", default=None, help="Only this rule id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def report(ctx: click.Context, since: datetime | None, rule_id: str | None, as_json: bool) -> None:
    """What happened to the deliveries: counts per rule and status, then every failed or
    unknown delivery with its reason and SMTP reply (from the delivery log in Redis), then the
    work in progress by state (planned, queued, sending, retrying; all rules) with the oldest
    age of each and how many are stuck past their deadline.

    A delivery sent again on request counts once, by its latest outcome.
    Exit 0, or 1 when failed or unknown deliveries are listed or work is stuck.

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
    backlog = _backlog(runtime)
    if as_json:
        for (rule, status), count in sorted(summary.counts.items()):
            line = {"kind": "count", "rule": rule, "status": status, "count": count}
            out.print(json.dumps(line), markup=False)
        for entry in summary.problems:
            out.print(json.dumps({"kind": "failure", **entry.as_json()}), markup=False)
        for entry in summary.possibly_twice:
            out.print(json.dumps({"kind": "possibly-twice", **entry.as_json()}), markup=False)
        for name in STATE_NAMES.values():
            figures = backlog.states[name]
            age = backlog.oldest_age_s(name)
            work = {"kind": "work", "state": name, "count": figures.count, "stuck": figures.stuck}
            out.print(json.dumps(work | {"oldest_age_s": age}), markup=False)
    else:
        statuses: tuple[str, ...] = ("sent", "skipped", "failed", "unknown")
        if any(status == "bounced" for _, status in summary.counts):
            # Written by `crm-worker mailbox` after `sent`: a column only once it happens.
            statuses = (*statuses, "bounced")
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
        if summary.possibly_twice:
            out.print(
                f"{len(summary.possibly_twice)} sent after an attempt was cut off mid-send "
                "(a worker or Redis lost between the server's reply and the ledger): they may "
                "be in the inbox twice, with the same Message-ID",
                markup=False,
            )
        out.print(_work_table(backlog, summary))
    if summary.problems or backlog.stuck:
        sys.exit(EXIT_PROBLEMS)


def _backlog(runtime: Runtime) -> Backlog:
    grace_s = runtime.settings.sweep_interval_s * SWEEP_INTERVALS_OF_GRACE
    return read_backlog(runtime.redis, now=utc_now().timestamp(), grace_s=grace_s)


def _work_table(backlog: Backlog, summary: Summary | None = None) -> Table:
    """Work by state: how many, the oldest's age, how many are stuck past their deadline; with
    a ``summary``, the failed and unknown deliveries of the log below (they wait for a
    person)."""
    table = Table(title=f"Work in progress ({backlog.total} not final, {backlog.stuck} stuck)")
    for column in ("state", "count", "oldest", "stuck"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for name in STATE_NAMES.values():
        figures = backlog.states[name]
        age = backlog.oldest_age_s(name)
        stuck = f"[red]{figures.stuck}[/]" if figures.stuck else "0"
        table.add_row(name, str(figures.count), _age(age), stuck)
    if summary is not None:
        now = backlog.now
        for status in ("unknown", "failed"):
            entries = [e for e in summary.problems if e.status == status]
            oldest = min((e.at.timestamp() for e in entries), default=None)
            age = None if oldest is None else now - oldest
            table.add_row(status, str(len(entries)), _age(age), "-")
    if backlog.read < backlog.total:
        table.caption = f"states of the {backlog.read} oldest deadlines shown"
    return table


def _age(seconds: float | None) -> str:
    """``42 s``, ``7 min``, ``3 h``, ``2 d``; ``-`` for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * 2 or (unit == "min" and seconds >= size):
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """The whole system on one screen: Redis, the scheduler (leader, last pass), the workers
    alive (heartbeats), the queue, work in progress and what is stuck, the send pause.

    Exit 0 when all is well, 1 when work is stuck or nobody delivers it, 3 when Redis is
    unreachable.

    \b
    Examples:
      crm-worker status
      watch -n 5 crm-worker status
    """
    runtime = runtime_for(ctx)
    settings = runtime.settings
    where = describe_redis(settings)
    try:
        state = read_status(
            runtime.redis,
            queue_name=settings.queue_name,
            sweep_interval_s=settings.sweep_interval_s,
        )
    except redis.RedisError as exc:
        out.print(f"Redis      [red]unreachable[/] ({escape(where)}): {escape(str(exc))}")
        sys.exit(EXIT_UNAVAILABLE)
    for line in _status_lines(state, where, crm_events=settings.crm_events_target is not None):
        out.print(line)
    out.print(_work_table(state.backlog))
    if not state.healthy:
        sys.exit(EXIT_PROBLEMS)


def _status_lines(state: SystemStatus, where: str, *, crm_events: bool) -> list[str]:
    aof = "AOF on" if state.aof else "[yellow]AOF off: a restart loses the ledger[/]"
    lines = [f"Redis      ok ({escape(where)}), {aof}"]
    if state.leader_lock_s is None:
        lines.append("Scheduler  [yellow]no leader[/] (none running, or a standby takes over)")
    else:
        leader = escape(state.leader or "(unnamed)")
        lines.append(f"Scheduler  leader {leader} (lock for {state.leader_lock_s:.0f} s)")
    if state.last_pass:
        p = state.last_pass
        by = p.get("by") or p.get("leader") or "?"  # "leader": as earlier versions wrote it
        lines.append(
            f"Last pass  {_age(state.last_pass_age_s)} ago by {escape(by)}, "
            f"took {p.get('took_s', '?')} s: "
            f"{p.get('queued', '?')} queued, {p.get('already_claimed', '?')} already claimed, "
            f"{p.get('skipped', '?')} skipped"
        )
    else:
        lines.append("Last pass  none recorded")
    names = ", ".join(escape(name) for name, _ in state.workers[:5])
    more = f" and {state.workers_alive - 5} more" if state.workers_alive > 5 else ""
    alive = f"{state.workers_alive} alive" + (f": {names}{more}" if names else "")
    lines.append(f"Workers    {alive if state.workers_alive else '[red]none alive[/]'}")
    lines.append(
        f"Queue      {state.queued_messages} batches waiting, {state.delayed_messages} delayed, "
        f"{state.dead_letters} dead-lettered"
    )
    if state.paused_for_s is None:
        lines.append("Sending    not paused")
    else:
        lines.append(
            f"Sending    [red]paused[/] for {_age(state.paused_for_s)} more (crm-worker resume)"
        )
    if crm_events or state.crm_events_waiting:
        lines.append(f"CRM events {_crm_events(state)}")
    return lines


def _crm_events(state: SystemStatus) -> str:
    """The suppression events' line: how many wait, and whether the CRM is failing."""
    waiting = f"{state.crm_events_waiting} waiting"
    if not state.crm_events_failures:
        return waiting
    retry = state.crm_events_retry_in_s
    when = f"next try in {_age(retry)}" if retry is not None else "next try at the next sweep"
    return (
        f"[yellow]{waiting}[/]: the CRM failed {state.crm_events_failures} time(s) in a row, "
        f"{when} (the worker log says why)"
    )


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
@click.option(
    "--since", type=Since(), default=None, help="Only entries added from this instant or ago."
)
@click.pass_context
def suppress_list(ctx: click.Context, as_json: bool, since: datetime | None) -> None:
    """Every suppressed address, oldest first, with why, since when and what it stops.

    \b
    For the CRM's nightly export of who left or bounced:
      crm-worker suppress list --json --since 24h
    Each line: {"address", "reason", "at", "key", "scope"}; scope "marketing" is an
    unsubscribe (service mail still goes), "all" a bounce, complaint or operator.
    """
    entries = [e for e in runtime_for(ctx).suppression if since is None or e.at >= since]
    if as_json:
        for e in entries:
            line = {
                "address": e.address,
                "reason": e.reason,
                "at": e.at.isoformat(),
                "key": e.key,
                "scope": e.scope,
            }
            out.print(json.dumps(line, ensure_ascii=False), markup=False)
        return
    table = Table(title=f"{len(entries)} suppressed address(es)")
    for column in ("address", "since (UTC)", "stops", "reason", "delivery"):
        table.add_column(column)
    for e in entries:
        stops = "marketing mail" if e.scope == "marketing" else "all mail"
        table.add_row(e.address, e.at.strftime("%Y-%m-%d %H:%M"), stops, e.reason, e.key)
    out.print(table)


@suppress.command("add")
@click.argument("address")
@click.option("--reason", default="added by an operator", help="Why (shown in reports).")
@click.pass_context
def suppress_add(ctx: click.Context, address: str, reason: str) -> None:
    """Never send to ADDRESS again. Exit 2 when ADDRESS is not an address."""
    _require_address(address)
    runtime_for(ctx).suppression.add(
        address, reason, now=utc_now(), event=SUPPRESSED, source=OPERATOR
    )
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
    if not runtime_for(ctx).suppression.remove(address, event=UNSUPPRESSED, source=OPERATOR):
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
        logging.getLogger("worker.records.pause").info("sending resumed by an operator")
        out.print("sending resumed", markup=False)
    else:
        out.print("sending was not paused; nothing to resume", markup=False)
