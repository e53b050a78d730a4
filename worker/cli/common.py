"""What every ``crm-worker`` command shares: exit codes, consoles, option types, the group.

Exit codes: 0 success, 1 problems found (``check``) or deliveries failed, 2 usage or
configuration error, 3 a service (Redis, the CRM data) is unreachable.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NoReturn

import click
from rich.console import Console

from worker.constants import MAX_LOG_LINE_CHARS
from worker.errors import ConfigError
from worker.localtime import parse_instant, utc_now
from worker.rules.models import parse_duration
from worker.runtime import Runtime
from worker.settings import Settings, load_settings
from worker.web.throttle import LogThrottle

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 instant; without an offset it is UTC."""

    name = "instant"
    hint = "is not an ISO 8601 instant, e.g. 2026-03-14T10:00:00Z"

    def parse(self, text: str) -> datetime:
        return parse_instant(text)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return self.parse(str(value))
        except ValueError:
            self.fail(f"{value!r} {self.hint}", param, ctx)


NOW_OPTION = click.option(
    "--now", type=Instant(), default=None, help="Pretend it is this instant (default: now)."
)


def load_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_CONFIG)


def runtime_for(ctx: click.Context) -> Runtime:
    runtime = Runtime(load_or_exit())
    ctx.call_on_close(runtime.close)
    return runtime


def usage_error(reason: str) -> NoReturn:
    """One line on stderr and exit 2: what was wrong with the command, and what to write."""
    err.print(f"error: {reason}", markup=False, soft_wrap=True)
    sys.exit(EXIT_CONFIG)


def require_rules(runtime: Runtime, rule_ids: Iterable[str | None]) -> None:
    """Exit 2 for a rule id that no file in the rules folder has (a typo in ``--rule`` would
    otherwise select nothing and look like "nothing to do")."""
    runtime.catalog.refresh()
    known = sorted({rule.id for _, rule in runtime.catalog.written()})
    for rule_id in rule_ids:
        if rule_id is None or rule_id in known:
            continue
        guess = difflib.get_close_matches(rule_id, known, n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]!r}?" if guess else f"rules: {', '.join(known) or 'none'}"
        usage_error(f"unknown rule {rule_id!r}; {hint}")


#: Each command's module, imported when the command runs or help lists it: ``run`` then loads
#: neither the console's web stack nor the mailbox reader (a second of start-up in all).
#: tests/test_cli_commands.py checks that every command is here, under its own module.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(("check", "plan", "preview", "schema"), "worker.cli.authoring"),
    **dict.fromkeys(("console", "console-user"), "worker.cli.console"),
    **dict.fromkeys(
        ("report", "resume", "retry-failed", "status", "suppress"), "worker.cli.deliveries"
    ),
    "mailbox": "worker.cli.mailbox",
    **dict.fromkeys(
        ("event", "health", "intake", "run", "scheduler", "worker"), "worker.cli.operations"
    ),
}


class LazyGroup(click.Group):
    """A group whose commands register themselves when :data:`COMMAND_MODULES` names their
    module and it is imported: on first use, not at start."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(module)  # its @cli.command() decorators add it here
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", count=True, help="More log output (-v per-message detail, -vv Dramatiq's)."
)
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
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
      crm-worker report --since 24h                     what was sent, skipped, failed

    Settings come from CRM_* environment variables or a .env file (see README).
    """
    # INFO by default: one line per change of the system's state (pause, resume, Redis lost
    # and back, takeovers, passes); per-message detail is DEBUG (-v).
    level = (logging.INFO, logging.DEBUG, logging.DEBUG)[min(verbose, 2)]
    if quiet:
        level = logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(CappedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose < 2:
        logging.getLogger("dramatiq").setLevel(logging.WARNING)
        # Each of Dramatiq's consumer threads logs a lost Redis at CRITICAL every few seconds;
        # the sweeper already says "Redis lost" and "Redis back" once each.
        handler.addFilter(_ConsumerOutageFilter())


class _ConsumerOutageFilter(logging.Filter):
    """At most one line a minute of Dramatiq's consumers' connection errors."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = LogThrottle(interval_s=60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("dramatiq.worker.ConsumerThread"):
            return True
        return self._throttle.admit(str(record.msg), now=time.monotonic()) is not None


class CappedFormatter(logging.Formatter):
    """Cuts every line of a log record (a traceback's too) at ``MAX_LOG_LINE_CHARS``."""

    def format(self, record: logging.LogRecord) -> str:
        limit = MAX_LOG_LINE_CHARS
        return "\n".join(
            line if len(line) <= limit else f"{line[: limit - 20]}… ({len(line)} chars)"
            for line in super().format(record).splitlines()
        )


class Since(Instant):
    """An ISO 8601 instant, or a duration back from now (``24h``, ``7d``)."""

    name = "since"
    hint = "is neither an instant nor a duration like 24h or 7d"

    def parse(self, text: str) -> datetime:
        try:
            return utc_now() - parse_duration(text)
        except ValueError:
            return parse_instant(text)
