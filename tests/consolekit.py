"""What the console's tests share: a copy of the sample CRM, rules and templates to change,
logins, the CSRF token of a page, and the console served by a real uvicorn."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from tests.serverkit import serve_app
from worker.runtime import Runtime
from worker.web.console import ConsoleUsers, create_console_app

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
EDITOR = "maria@shop.example.com"
VIEWER = "viewer"
#: What an attacker who can edit a customer's name writes into it.
SCRIPT = "<script>alert('x')</script>"


def console_files(folder: Path, *, first_name: str | None = None) -> dict[str, str]:
    """Copies of the sample CRM, rules and templates under ``folder`` (customer 1's first
    name replaced when given), as settings."""
    crm, rules, templates = folder / "crm", folder / "rules", folder / "templates"
    shutil.copytree(REPO / "examples" / "crm", crm)
    shutil.copytree(REPO / "rules", rules)
    shutil.copytree(REPO / "templates", templates)
    if first_name is not None:
        path = crm / "customers.csv"
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        rows[0]["first_name"] = first_name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return {
        "CRM_SOURCE": str(crm),
        "CRM_RULES_DIR": str(rules),
        "CRM_TEMPLATES_DIR": str(templates),
    }


def add_logins(runtime: Runtime) -> None:
    users = ConsoleUsers(runtime.redis)
    users.add(EDITOR, PASSWORD, role="editor")
    users.add(VIEWER, PASSWORD, role="viewer", email="viewer@shop.example.com")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def serve_console(runtime: Runtime) -> Iterator[str]:
    """The console served by a real uvicorn on a free port, as ``crm-worker console`` serves
    it, until the generator closes."""
    yield from serve_app(create_console_app(runtime), runtime.settings)
