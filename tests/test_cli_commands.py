"""The command line loads each command's module on first use (``COMMAND_MODULES``): every command
must be listed there under the module that defines it, and the main job must start without the
parts of the package it does not use."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from worker.cli import cli
from worker.cli.common import COMMAND_MODULES


def test_every_command_is_listed_under_its_own_module():
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(module)
    defined = {
        name: getattr(command.callback, "__module__", None)
        for name, command in cli.commands.items()
    }
    assert defined == COMMAND_MODULES


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {
        line.split()[0]
        for line in result.output.split("Commands:", 1)[1].splitlines()
        if line.startswith("  ") and line.split()
    }
    assert listed == set(COMMAND_MODULES)


def test_an_unknown_command_is_still_refused():
    result = CliRunner().invoke(cli, ["rnu"])
    assert result.exit_code == 2
    assert "No such command 'rnu'" in result.output


def test_the_main_job_starts_without_the_web_stack_sqlalchemy_or_password_hashing():
    # `crm-worker run` on a CSV CRM: what it imports before it plans (a fresh interpreter).
    probe = (
        "import sys\n"
        "from worker.cli import cli\n"
        "cli.get_command(None, 'run')\n"
        "import worker.runtime, worker.processes\n"
        "heavy = ('sqlalchemy', 'httpx', 'dkim', 'starlette', 'uvicorn', 'argon2', 'imap_tools')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
