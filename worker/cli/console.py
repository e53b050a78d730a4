"""The sales managers' web console and its logins: console, console-user add|list|remove."""

from __future__ import annotations

import sys

import click

from worker.cli.common import EXIT_CONFIG, EXIT_PROBLEMS, cli, err, load_or_exit, out, runtime_for
from worker.errors import ConsoleUserError
from worker.web.console import ConsoleUsers, serve_console
from worker.web.console.users import ROLES


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default CRM_CONSOLE_HOST).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (default CRM_CONSOLE_PORT)."
)
def console(host: str | None, port: int | None) -> None:
    """Serve the web console: rules with their diagnostics, upcoming sends, customers,
    previews and the delivery log, behind logins (add one with `console-user add`).

    \b
    Examples:
      crm-worker console-user add maria@shop.example --role editor
      crm-worker console                       http://127.0.0.1:8090/
      CRM_CONSOLE_HTTPS=true crm-worker console --host 0.0.0.0   behind a TLS proxy
    """
    serve_console(load_or_exit(), host=host, port=port, announce=lambda line: err.print(line))


@cli.group("console-user")
def console_user() -> None:
    """Logins of the web console (argon2id hashes in Redis).

    \b
    Examples:
      crm-worker console-user add maria@shop.example --role editor
      printf '%s' "$PASSWORD" | crm-worker console-user add bot --role viewer
      crm-worker console-user list
      crm-worker console-user remove maria@shop.example
    """


@console_user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="viewer",
    show_default=True,
    help="viewer: every page; editor: also edit rules, retry, send test copies.",
)
@click.option(
    "--email", default="", help="Where 'send a test to me' sends (default: NAME if an address)."
)
@click.pass_context
def console_user_add(ctx: click.Context, name: str, role: str, email: str) -> None:
    """Add a login, or set a new password, role and address for an existing one.

    The password is read from standard input when it is not a terminal (one line), else
    asked for twice.
    """
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    users = ConsoleUsers(runtime_for(ctx).redis)
    try:
        new = users.add(name, password, role=role, email=email)
    except ConsoleUserError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_CONFIG)
    err.print(f"{'added' if new else 'updated'} console login {name} ({role})", markup=False)


@console_user.command("list")
@click.pass_context
def console_user_list(ctx: click.Context) -> None:
    """Every console login: name, role, address."""
    for user in ConsoleUsers(runtime_for(ctx).redis).all():
        out.print(f"{user.name}\t{user.role}\t{user.email}", markup=False)


@console_user.command("remove")
@click.argument("name")
@click.pass_context
def console_user_remove(ctx: click.Context, name: str) -> None:
    """Remove a login; its open sessions end at their next request. Exit 1 if unknown."""
    if not ConsoleUsers(runtime_for(ctx).redis).remove(name):
        err.print(f"no console login {name!r}", markup=False)
        sys.exit(EXIT_PROBLEMS)
    err.print(f"removed console login {name}", markup=False)
