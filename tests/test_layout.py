"""The package's imports run downward only (the layers in pyproject.toml, [tool.importlinter]).

A newcomer finds a concept by its folder; this keeps the folders honest: rules, sources and
settings never learn about delivery, web pages or commands, and planning never imports the
delivery that re-checks with it. The same check runs as ``lint-imports`` in CI.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script), "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_import_runs_downward() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    # The contract is not vacuous: with settings placed above planning (the real code has
    # planning.contact_policy import settings), the same tool reports the upward import.
    config = tmp_path / "upside-down.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_package = "worker"

            [[tool.importlinter.contracts]]
            name = "settings above planning"
            type = "layers"
            layers = ["worker.settings", "worker.planning"]
            """
        )
    )
    result = _lint(config)
    assert result.returncode != 0
    assert "worker.planning is not allowed to import worker.settings" in result.stdout
