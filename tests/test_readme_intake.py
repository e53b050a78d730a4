"""README's event intake example, run as written: the shell block of its "Event intake" section
with a real intake process, a real curl and the shipped `purchase-thank-you` rule.

Only the port changes (8080 may be taken where tests run); the answer must be the one README
shows under the command.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.test_cli import base_env
from worker.records.ledger import Ledger


def intake_example() -> tuple[str, str]:
    """The commands of README's first shell block under "## Event intake", and the answer it
    documents (the comment line that follows the curl command)."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Event intake", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = block[1].splitlines()
    answer = next(line for line in lines if line.startswith("# {"))
    return "\n".join(line for line in lines if line != answer), answer.removeprefix("# ")


def test_readme_intake_example_works_as_written(tmp_path, redis_client):
    commands, answer = intake_example()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    # README's commands start .venv/bin/crm-worker from the checkout: the same here.
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "crm-worker").symlink_to(Path(sys.executable).parent / "crm-worker")
    script = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -e\n" + commands.replace("8080", port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | base_env(tmp_path)
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == answer
    key = re.search(r'"queued":\["([^"]+)"\]', answer)
    assert key is not None
    assert Ledger(redis_client).get(key[1])["state"] == "queued"
