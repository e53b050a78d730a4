"""The set of rules in force, reloaded from the rules folder when files change.

A broken edit never takes a rule away: the catalog keeps the last valid version of that file's
rule, reports the problem (file:line:col) and keeps every other rule running.

A rule file can be valid on its own and still unusable: a ``when:`` on a field the CRM data does
not have would skip every customer. The catalog takes a ``vet`` function (given by the runtime,
which knows the data) and treats a rule it objects to like a broken edit. Problems are logged
when a file changes, so a refused rule is logged once, not at every pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import Problem, RuleError
from worker.rules.loader import load_rule_file
from worker.rules.models import Rule

log = logging.getLogger(__name__)

RULE_SUFFIXES = (".yaml", ".yml")

#: Problems of a rule that loaded, found with what the rules folder alone cannot tell (the
#: CRM's fields); given the rule and its file.
Vet = Callable[[Rule, Path], list[Problem]]


@dataclass
class _Entry:
    mtime_ns: int
    size: int
    rule: Rule | None  # last valid version, kept through broken edits
    problems: list[Problem] = field(default_factory=list)
    written: Rule | None = None  # what the file says now, when it loads (even if refused)


class RuleCatalog:
    """Rules of one folder, by id; call :meth:`refresh` to pick up edits."""

    def __init__(self, rules_dir: Path, *, vet: Vet | None = None, logged: bool = True) -> None:
        self.rules_dir = rules_dir
        self._vet = vet
        #: False for a catalog that only checks (an edit in the console before it is saved):
        #: its findings are the caller's to show, not the running worker's to log.
        self._logged = logged
        self._entries: dict[Path, _Entry] = {}
        self._by_id: dict[str, Rule] = {}
        self._id_problems: list[Problem] = []

    def refresh(self) -> list[Problem]:
        """Re-read changed files; return the problems now present (empty when all is valid)."""
        paths = self._rule_paths()
        for path in list(self._entries):
            if path not in paths:
                log.info("rule file removed: %s", path)
                del self._entries[path]
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            entry = self._entries.get(path)
            if entry and (entry.mtime_ns, entry.size) == (stat.st_mtime_ns, stat.st_size):
                continue
            previous = entry.rule if entry else None
            written: Rule | None = None
            try:
                written = load_rule_file(path)
                refused = self._vet(written, path) if self._vet is not None else []
                if refused:
                    raise RuleError(refused)
                self._entries[path] = _Entry(stat.st_mtime_ns, stat.st_size, written, [], written)
                if entry is not None:
                    log.info("rule reloaded: %s (%s)", written.id, path)
            except RuleError as exc:
                self._entries[path] = _Entry(
                    stat.st_mtime_ns, stat.st_size, previous, exc.problems, written
                )
                kept = f" (keeping the previous version of {previous.id})" if previous else ""
                if self._logged:
                    for problem in exc.problems:
                        log.error("invalid rule: %s%s", problem, kept)
        self._index()
        return self.problems

    @property
    def problems(self) -> list[Problem]:
        found = [p for entry in self._entries.values() for p in entry.problems]
        return sorted(found + self._id_problems)

    def _index(self) -> None:
        by_id: dict[str, Rule] = {}
        where: dict[str, Path] = {}
        self._id_problems = []
        for path in sorted(self._entries):
            rule = self._entries[path].rule
            if rule is None:
                continue
            if rule.id in by_id:
                self._id_problems.append(
                    Problem(path, 1, 1, f"rule id {rule.id!r} is also used by {where[rule.id]}")
                )
                continue
            by_id[rule.id] = rule
            where[rule.id] = path
        self._by_id = by_id

    def _rule_paths(self) -> set[Path]:
        if not self.rules_dir.is_dir():
            return set()
        return {
            p
            for p in self.rules_dir.iterdir()
            if p.suffix in RULE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        }

    def written(self) -> list[tuple[Path, Rule]]:
        """Each file's rule as written now, also one refused by the vet (whose previous
        version may be in force instead): what ``check`` reports on."""
        return [
            (path, entry.written)
            for path, entry in sorted(self._entries.items())
            if entry.written is not None
        ]

    def path_of(self, rule_id: str) -> Path | None:
        """The file the rule in force with this id was loaded from."""
        for path, entry in self._entries.items():
            if entry.rule is not None and entry.rule.id == rule_id:
                return path
        return None

    def get(self, rule_id: str) -> Rule | None:
        """The rule in force with this id (None when unknown)."""
        return self._by_id.get(rule_id)

    def __iter__(self) -> Iterator[Rule]:
        return iter(sorted(self._by_id.values(), key=lambda r: r.id))

    def __len__(self) -> int:
        return len(self._by_id)
