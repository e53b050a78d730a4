"""Changing a rule file from the console: checked exactly as ``crm-worker check`` checks it,
then written atomically beside a backup of the old version. An edit with a problem is never
written; the running workers pick a saved one up as they pick up any file edit (the catalog
rereads a file whose size or modification time changed).

The check runs on a copy of the rules folder holding the edited text in place of the file
(:func:`~worker.authoring.validation.check_all` over it, with the same CRM data, templates and
webhooks), so every finding of ``check`` is there: YAML slips, unknown keys, a field the CRM
data lacks, a template that does not exist or does not render, a rule id another file has.

Example::

    edit = edit_rule(path, new_text, seen=digest(old_text), runtime_parts…)  # doctest: +SKIP
    if not edit.saved:
        for problem in edit.problems:
            print(problem)
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from worker.authoring.validation import check_all, vet_rule
from worker.errors import Problem
from worker.messages.rendering import TemplateRenderer
from worker.rules.catalog import RULE_SUFFIXES, RuleCatalog
from worker.sources.base import Source


@dataclass(frozen=True)
class RuleEdit:
    """What became of an edit: saved (with the backup of the old file), or refused with the
    problems found in it (``stale``: the file changed since the editor opened it)."""

    path: Path
    saved: bool
    problems: list[Problem] = field(default_factory=list)
    backup: Path | None = None
    stale: bool = False


def digest(text: str) -> str:
    """A fingerprint of a file's text: the editor sends back the one it started from."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def rule_files(rules_dir: Path) -> list[Path]:
    """The files the catalog reads, sorted (the same choice as the catalog's)."""
    if not rules_dir.is_dir():
        return []
    return sorted(
        p
        for p in rules_dir.iterdir()
        if p.suffix in RULE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def check_rule_text(
    path: Path,
    text: str,
    *,
    renderer: TemplateRenderer,
    source: Source,
    webhooks: Collection[str] | None = None,
    before: str | None = None,
) -> list[Problem]:
    """Every problem ``check`` would report if ``path`` held ``text``, that is the edit's:
    the file's own problems, those elsewhere that name it (another file with the same rule
    id), and, given the text ``before`` the edit, every other problem the edit brings (a
    template that does not fit the rule now: its fields are reported in the template)."""
    rules_dir = path.parent
    with tempfile.TemporaryDirectory(prefix="rule-check-") as tmp:
        folder = Path(tmp)
        for other in rule_files(rules_dir):
            if other.name != path.name:
                shutil.copyfile(other, folder / other.name)

        def found(content: str) -> set[Problem]:
            (folder / path.name).write_bytes(content.encode("utf-8", "surrogatepass"))
            shadow = RuleCatalog(folder, vet=vet_rule(source), logged=False)
            problems = set()
            for problem in check_all(shadow, renderer, source, webhooks=webhooks):
                message = problem.message.replace(str(folder), str(rules_dir))
                where = problem.path
                if where.parent == folder:
                    where = rules_dir / where.name
                problems.add(Problem(where, problem.line, problem.col, message))
            return problems

        after = found(text)
        already = found(before) if before is not None else after
    return sorted(
        problem
        for problem in after
        if problem.path == path or str(path) in problem.message or problem not in already
    )


def edit_rule(
    path: Path,
    text: str,
    *,
    seen: str,
    backup_dir: Path,
    now: datetime,
    renderer: TemplateRenderer,
    source: Source,
    webhooks: Collection[str] | None = None,
) -> RuleEdit:
    """Check ``text`` as the new content of ``path`` and write it when it has no problem.

    ``seen`` is :func:`digest` of the text the editor started from: when the file changed
    since, nothing is written (``stale``), so two people never overwrite each other unseen.
    Browsers send a text area's lines with CRLF; a file written with LF keeps LF.
    """
    old = path.read_text(encoding="utf-8", errors="surrogateescape")
    if "\r\n" not in old:
        text = text.replace("\r\n", "\n")
    if digest(old) != seen:
        return RuleEdit(path, saved=False, stale=True)
    problems = check_rule_text(
        path, text, renderer=renderer, source=source, webhooks=webhooks, before=old
    )
    if problems:
        return RuleEdit(path, saved=False, problems=problems)
    backup = write_with_backup(path, text, backup_dir=backup_dir, now=now)
    return RuleEdit(path, saved=True, backup=backup)


def write_with_backup(path: Path, text: str, *, backup_dir: Path, now: datetime) -> Path:
    """Copy ``path`` into ``backup_dir`` (name + UTC time), then replace it with ``text`` in
    one step: a reader (a worker rereading rules) sees the old file or the new, never half."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    backup = backup_dir / f"{path.name}.{now:%Y%m%dT%H%M%S.%fZ}"
    shutil.copy2(path, backup)
    # A dot name: the catalog ignores it while it is being written.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(text.encode("utf-8", "surrogatepass"))
            handle.flush()
            os.fsync(handle.fileno())
        shutil.copymode(path, temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return backup
