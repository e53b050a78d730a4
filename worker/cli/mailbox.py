"""``crm-worker mailbox``: read bounces, complaints and mailto unsubscribes, act, file them."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import datetime

import click
from rich.markup import escape

from worker.cli.common import EXIT_CONFIG, EXIT_UNAVAILABLE, NOW_OPTION, cli, err, out, runtime_for
from worker.constants import FEEDBACK_FOLDERS
from worker.delivery.mailbox import FeedbackMailbox, MailboxPass, feedback_mailbox
from worker.errors import MailboxError
from worker.localtime import utc_now
from worker.runtime import Runtime


@cli.command()
@click.option("--once", is_flag=True, help="One pass over the inbox, print a summary, exit.")
@NOW_OPTION
@click.pass_context
def mailbox(ctx: click.Context, once: bool, now: datetime | None) -> None:
    """Read the unsubscribe/bounce mailbox over IMAP (CRM_MAILBOX_*): suppress bounced and
    complaining addresses, count soft bounces, honour mailto unsubscribes, and move each mail
    to a folder per outcome (crm/bounced, crm/complaint, …). Nothing is deleted.

    \b
    Examples:
      crm-worker mailbox --once         one pass now, print what went where
      crm-worker mailbox                a pass every CRM_MAILBOX_POLL_S seconds until Ctrl-C

    Exit codes: 0 done, 2 configuration error, 3 the mailbox or Redis is unreachable.
    """
    # flufl.bounce logs each detector it tries at INFO and a traceback when one trips over a
    # broken mail; the mail's own reason already says so, once.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
    runtime = runtime_for(ctx)
    if not runtime.settings.mailbox_host:
        err.print("[red]error:[/] CRM_MAILBOX_HOST is not set: which IMAP server holds the mail?")
        sys.exit(EXIT_CONFIG)
    if now is not None and not once:
        raise click.UsageError("--now works with --once only")
    reader = _reader(runtime)
    if once:
        try:
            result = reader.run_pass(now or utc_now())
        except MailboxError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            sys.exit(EXIT_UNAVAILABLE)
        out.print(_summary(result))
        return
    _poll(reader, runtime.settings.mailbox_poll_s)


def _reader(runtime: Runtime) -> FeedbackMailbox:
    return feedback_mailbox(
        runtime.settings,
        client=runtime.redis,
        suppression=runtime.suppression,
        unsubscriber=runtime.unsubscriber,
        delivery_log=runtime.delivery_log,
    )


def _poll(reader: FeedbackMailbox, interval_s: float) -> None:
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        err.print(f"stopping ({signal.Signals(signum).name}) …")
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    err.print(f"reading the mailbox every {interval_s:g} s; Ctrl-C to stop")
    while not stop.is_set():
        try:
            result = reader.run_pass(utc_now())
            if result.handled:
                out.print(_summary(result))
        except MailboxError as exc:
            # The server may be restarting: the mails wait in the inbox for the next pass.
            err.print(f"[yellow]warning:[/] {escape(str(exc))}")
        stop.wait(interval_s)


def _summary(result: MailboxPass) -> str:
    total = sum(result.counts.values())
    parts = ", ".join(f"{name} {result.counts[name]}" for name in FEEDBACK_FOLDERS)
    return f"mailbox: {total} mail{'s' if total != 1 else ''} handled: {parts}"
