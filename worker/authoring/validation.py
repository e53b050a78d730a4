"""``crm-worker check``: everything a sales manager can get wrong, found before customers see it.

Rules are validated by their loader (YAML and models); this module adds what needs the other
parts: every field a rule names (trigger dates, ``when:``, recipients) is one the CRM data has;
templates exist in the default locale and compile; every field, filter and file a template
reads, in every branch, macro, include and layout, exists (read from the syntax tree, see
:mod:`worker.messages.template_fields`); and each template renders for a sample record in every
locale (sandbox violations, render limits, values a filter cannot format). Every problem is reported
where it is written: the rule file's line and column, or the template's.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.constants import MAX_LOCALE_SCAN
from worker.delivery.payload import WEBHOOK_JSON, WEBHOOK_TEXT, render_payload
from worker.errors import Problem, RuleError, SourceError, TemplateError
from worker.messages.rendering import PARTS, TemplateRenderer, locale_chain
from worker.messages.template_fields import (
    field_uses,
    filter_uses,
    referenced_templates,
    use_pattern,
)
from worker.planning.conditions import ConditionError, compile_condition, condition_uses
from worker.planning.context import message_context
from worker.planning.plan import subject_records
from worker.planning.triggers import Occurrence, example_tag
from worker.rules.catalog import RuleCatalog, Vet
from worker.rules.loader import parse_yaml
from worker.rules.models import EventTrigger, Rule
from worker.sources.base import Record, Source
from worker.sources.schema import FIELD_TYPES, REQUIRED_COLUMNS

#: The fields of what every message sees besides its records (see worker.planning.context).
OCCURRENCE_FIELDS = frozenset({"key", "tag", "due_at"})
COMPANY_FIELDS = frozenset({"name", "address", "crm_customer_url"})
UNSUBSCRIBE_FIELDS = frozenset({"url", "mailto"})
#: What an event rule's templates see as ``event`` (``event.data`` is the CRM's own JSON).
EVENT_FIELDS = frozenset({"id", "type", "at", "data"})
#: How many lines after ``when:`` a condition written over several lines is looked for in.
MAX_VALUE_LINES = 20
#: What a webhook template provides (the first that exists is posted).
WEBHOOK_PARTS = (WEBHOOK_JSON, WEBHOOK_TEXT)
#: What templates see as ``unsubscribe`` while ``check`` renders them.
SAMPLE_UNSUBSCRIBE = {
    "url": "https://example.invalid/unsubscribe/sample",
    "mailto": "mailto:unsubscribe@example.invalid?subject=unsubscribe",
}


def check_all(
    catalog: RuleCatalog,
    renderer: TemplateRenderer,
    source: Source,
    *,
    webhooks: Collection[str] | None = None,
) -> list[Problem]:
    """Every problem in rules and templates, sorted by file and line; with ``webhooks`` (the
    names in CRM_WEBHOOKS), also every enabled rule that posts to a webhook not configured (a
    rule shipped switched off, waiting for its webhook, is no problem yet)."""
    problems = list(catalog.refresh())
    # Templates as they are on disk now, not as rendered up to a second ago (hot reload).
    renderer.reread()
    for path, rule in catalog.written():
        problems.extend(_check_rule(rule, path, renderer, source))
        if webhooks is not None and rule.enabled:
            problems.extend(_check_webhooks(rule, path, webhooks))
    problems.extend(_check_template_files(renderer))
    return sorted(set(problems))


def check_warnings(
    catalog: RuleCatalog, renderer: TemplateRenderer, source: Source
) -> list[Problem]:
    """What is valid but likely not meant, for ``check`` to print without failing: a marketing
    rule that does not look at opt-in, and customers whose language has no template folder
    (they read the fallback language). Call after :func:`check_all` (rules read)."""
    warnings: list[Problem] = []
    locales = _customer_locales(source)
    for path, rule in catalog.written():
        if not rule.enabled:
            continue
        where = _Where(path)
        to_customers = [n for n, action in enumerate(rule.send) if action.to_customer]
        if rule.kind == "marketing" and to_customers and "opt_in" not in (rule.when or ""):
            line, col = where(("when",) if rule.when else ("trigger",))
            warnings.append(
                Problem(
                    path,
                    line,
                    col,
                    "warning: a marketing rule that does not check opt-in; add "
                    "`when: customer.email_opt_in`, or write `kind: service` for mail about "
                    "the customer's own case (a complaint, a delivery)",
                )
            )
        for n in to_customers:
            warnings.extend(_fallback_warnings(rule, n, renderer, locales, where))
    return sorted(set(warnings))


def _customer_locales(source: Source) -> Counter[str]:
    """How many customers have each locale (the first ``MAX_LOCALE_SCAN`` customers)."""
    found: Counter[str] = Counter()
    try:
        for n, record in enumerate(source.iter_records("customer")):
            if n >= MAX_LOCALE_SCAN:
                break
            locale = record["locale"]
            if isinstance(locale, str) and locale.strip():
                found[locale.strip()] += 1
    except SourceError:
        return Counter()
    return found


def _fallback_warnings(
    rule: Rule, n: int, renderer: TemplateRenderer, locales: Counter[str], where: _Where
) -> Iterator[Problem]:
    action = rule.send[n]
    if renderer.default_locale not in renderer.locales(action.template):
        return  # reported by check_all
    line, col = where(("send", n, "template"))
    for locale, count in sorted(locales.items()):
        language = locale_chain(locale, renderer.default_locale)[0].partition("-")[0]
        try:
            chosen = renderer.resolve_locale(action.template, locale)
        except TemplateError:
            continue
        if chosen.lower().partition("-")[0] != language:
            yield Problem(
                where.path,
                line,
                col,
                f"warning: template {action.template!r} has no {language}/ folder: "
                f"{count} customer(s) with locale {locale!r} get {chosen!r}",
            )


def _check_rule(
    rule: Rule, path: Path, renderer: TemplateRenderer, source: Source
) -> Iterator[Problem]:
    where = _Where(path)
    try:
        fields = data_fields(rule, source)
        yield from rule_field_problems(rule, path, fields)
    except SourceError as exc:
        line, col = where(("trigger", rule.trigger.kind))
        yield Problem(path, line, col, f"cannot read the CRM data to check this rule: {exc}")
        return
    sample = _sample_record(source, rule.trigger.spec.entity)
    for n, action in enumerate(rule.send):
        if renderer.default_locale not in renderer.locales(action.template):
            yield _unknown_template(rule, n, renderer, where)
            continue
        static = list(_template_field_problems(action.template, renderer, fields, action.channel))
        yield from static
        if not static:  # a render would only repeat the same typos, with less precise places
            yield from _check_template(
                rule, action.template, renderer, source, sample, action.channel
            )


def vet_rule(source: Source) -> Vet:
    """What a running worker refuses a rule for (see :class:`RuleCatalog`): a field the CRM
    data does not have. When the data cannot be read now, nothing is refused: the pass itself
    then fails and is retried."""

    def vet(rule: Rule, path: Path) -> list[Problem]:
        try:
            return rule_field_problems(rule, path, data_fields(rule, source))
        except SourceError:
            return []

    return vet


def data_fields(rule: Rule, source: Source) -> dict[str, frozenset[str]]:
    """What a message of ``rule`` (and its ``when:``) can read: per name of its context, the
    fields it has; an empty set means "not known" (a source without rows of that entity yet),
    so nothing is reported about it. Raises :class:`SourceError` when the data is unreadable."""
    spec = rule.trigger.spec
    fields: dict[str, frozenset[str]] = {
        "occurrence": OCCURRENCE_FIELDS,
        "company": COMPANY_FIELDS,
        "unsubscribe": UNSUBSCRIBE_FIELDS,
    }
    for entity in sorted({spec.entity, "customer"}):
        columns = source.columns(entity)
        fields[entity] = columns | {"id"} if columns else frozenset()
    if isinstance(spec, EventTrigger):
        fields["event"] = EVENT_FIELDS
    return fields


def rule_field_problems(
    rule: Rule, path: Path, fields: Mapping[str, frozenset[str]]
) -> list[Problem]:
    """Every field the rule file names (trigger dates, ``when:``, recipients) that the CRM data
    does not have, at the place in the file where it is written, with "did you mean". A running
    worker refuses a rule with any of these (see :class:`~worker.rules.catalog.RuleCatalog`):
    it would skip every record."""
    where = _Where(path)
    spec = rule.trigger.spec
    kind = rule.trigger.kind
    records = {spec.entity, "customer"}
    problems = []
    for key in ("field", "resolved"):
        value = getattr(spec, key, None)
        if not isinstance(value, str):
            continue
        target, _, name = value.partition(".")
        known = fields.get(target, frozenset())
        if known and name not in known:
            line, col = where(("trigger", kind, key))
            problems.append(
                Problem(
                    path,
                    line,
                    col,
                    f"trigger.{kind}.{key}: {value} is not in the {target} data"
                    f"{_did_you_mean(name, known)}",
                )
            )
    if rule.when:
        problems.extend(_condition_problems(rule.when, path, where, fields))
    for n, action in enumerate(rule.send):
        target, _, name = action.to.partition(".")
        line, col = where(("send", n, "to"))
        if target not in records:
            problems.append(
                Problem(
                    path,
                    line,
                    col,
                    f"send[{n}].to: {action.to} is not a field of this rule's {spec.entity} or "
                    f"its customer; write e.g. customer.email",
                )
            )
        elif fields.get(target) and name not in fields[target]:
            problems.append(
                Problem(
                    path,
                    line,
                    col,
                    f"recipient field {action.to} is not in the {target} data"
                    f"{_did_you_mean(name, fields[target])}",
                )
            )
    return problems


def _condition_problems(
    when: str, path: Path, where: _Where, fields: Mapping[str, frozenset[str]]
) -> Iterator[Problem]:
    line, col = where(("when",))
    try:
        compile_condition(when)
        uses = condition_uses(when)
    except ConditionError as exc:
        yield Problem(path, line, col, str(exc))
        return
    usable = sorted(set(fields) - {"unsubscribe"})
    for use in uses:
        if use.name not in fields or use.name == "unsubscribe":
            at_line, at_col = where.find(("when",), use_pattern(use.name, None))
            yield Problem(
                path,
                at_line,
                at_col,
                f"condition uses unknown name {use.name!r}; it can use {', '.join(usable)}"
                f"{_did_you_mean_path(use.name, fields)}",
            )
            continue
        known = fields[use.name]
        if use.field is not None and known and use.field not in known:
            at_line, at_col = where.find(("when",), use_pattern(use.name, use.field))
            yield Problem(
                path,
                at_line,
                at_col,
                f"condition uses {use.name}.{use.field}, which is not in the {use.name} data"
                f"{_did_you_mean(use.field, known)}",
            )


def _unknown_template(rule: Rule, n: int, renderer: TemplateRenderer, where: _Where) -> Problem:
    action = rule.send[n]
    line, col = where(("send", n, "template"))
    folders = _template_folders(renderer)
    guess = difflib.get_close_matches(action.template, folders, n=1, cutoff=0.6)
    if action.template in folders:
        found = ", ".join(renderer.locales(action.template)) or "nothing"
        parts = " or ".join(WEBHOOK_PARTS) if action.channel == "webhook" else ", ".join(PARTS)
        message = (
            f"template {action.template!r} needs a {renderer.default_locale}/ folder with "
            f"{parts} (found: {found})"
        )
    elif guess:
        message = f"template {action.template!r} does not exist; did you mean {guess[0]!r}?"
    else:
        message = (
            f"template {action.template!r} does not exist in {renderer.templates_dir}; "
            f"there are: {', '.join(folders) or 'none'}"
        )
    return Problem(where.path, line, col, message)


def _template_folders(renderer: TemplateRenderer) -> list[str]:
    root = renderer.templates_dir
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _template_field_problems(
    name: str,
    renderer: TemplateRenderer,
    fields: Mapping[str, frozenset[str]],
    channel: str,
) -> Iterator[Problem]:
    """Every field read by any file of template ``name`` in any locale, and by the layouts,
    includes and macros they use, in every branch, that the message's data does not have."""
    parts = WEBHOOK_PARTS if channel == "webhook" else PARTS
    pending = [
        f"{name}/{locale}/{part}"
        for locale in renderer.locales(name)
        for part in parts
        if (renderer.templates_dir / name / locale / part).is_file()
    ]
    seen: set[str] = set()
    usable = set(fields) | set(renderer.env.globals)
    while pending:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        try:
            ast = renderer.parse(file)
            source = (renderer.templates_dir / file).read_text(encoding="utf-8")
        except (TemplateError, OSError, UnicodeDecodeError):
            continue  # reported by _check_template_files, with its line
        path = renderer.templates_dir / file
        for target, line in referenced_templates(ast):
            if (renderer.templates_dir / target).is_file():
                pending.append(target)
                continue
            files = sorted(
                f.relative_to(renderer.templates_dir).as_posix()
                for f in renderer.templates_dir.rglob("*.j2")
            )
            guess = difflib.get_close_matches(target, files, n=1, cutoff=0.75)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            yield Problem(path, line, 1, f"template file {target!r} does not exist{hint}")
        for line, col, name in filter_uses(ast, source):
            if name not in renderer.env.filters or name.startswith("_"):
                names = sorted(f for f in renderer.env.filters if not f.startswith("_"))
                guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                hint = f"; did you mean {guess[0]!r}?" if guess else ""
                yield Problem(path, line, col, f"unknown filter {name!r}{hint}")
        for use in field_uses(ast, source):
            if use.name not in usable:
                yield Problem(
                    path,
                    use.line,
                    use.name_col,
                    f"unknown name {use.name!r}; this message can use "
                    f"{', '.join(sorted(fields))}{_did_you_mean_path(use.name, fields)}",
                )
                continue
            known = fields.get(use.name, frozenset())
            if use.field is not None and use.field.startswith("_"):
                yield Problem(
                    path,
                    use.line,
                    use.col,
                    f"{use.name}.{use.field} is refused by the sandbox: a field of the CRM data "
                    "never starts with _",
                )
            elif use.field is not None and known and use.field not in known:
                yield Problem(
                    path,
                    use.line,
                    use.col,
                    f"{use.name}.{use.field} is not in the {use.name} data"
                    f"{_did_you_mean(use.field, known)}",
                )


def _check_webhooks(rule: Rule, path: Path, webhooks: Collection[str]) -> Iterator[Problem]:
    where = _Where(path)
    for n, action in enumerate(rule.send):
        if action.webhook is not None and action.webhook not in webhooks:
            known = ", ".join(sorted(webhooks)) or "none"
            line, col = where(("send", n, "webhook"))
            yield Problem(
                path,
                line,
                col,
                f"webhook {action.webhook!r} is not in CRM_WEBHOOKS (configured: {known})"
                f"{_did_you_mean(action.webhook, frozenset(webhooks))}",
            )


def _did_you_mean(name: str, known: frozenset[str]) -> str:
    guess = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {guess[0]!r}?" if guess else ""


def _did_you_mean_path(name: str, fields: Mapping[str, frozenset[str]]) -> str:
    """A guess for a bare name: another name, or a field written without its entity
    (``first_name`` → ``customer.first_name``)."""
    candidates = {n: n for n in fields} | {
        field: f"{entity}.{field}" for entity, known in fields.items() for field in known
    }
    guess = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return f"; did you mean {candidates[guess[0]]!r}?" if guess else ""


class _Where:
    """Line and column of a key in a rule file (1, 1 when the file cannot be read again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._positions: Any = None
        self._lines: list[str] = []

    def __call__(self, loc: tuple[str | int, ...]) -> tuple[int, int]:
        if self._positions is None:
            try:
                text = self.path.read_text(encoding="utf-8")
                self._positions = parse_yaml(text, self.path)[1]
                self._lines = text.removeprefix("\ufeff").splitlines()
            except (OSError, UnicodeDecodeError, RuleError):
                return (1, 1)
        position: tuple[int, int] = self._positions.nearest(loc, prefer_key=False)
        return position

    def find(self, loc: tuple[str | int, ...], pattern: str) -> tuple[int, int]:
        """Where ``pattern`` (its first group) is first written in the value at ``loc`` (a
        condition over several lines, in quotes or not); the value's own place if not found."""
        line, col = self(loc)
        for n in range(line, min(line + MAX_VALUE_LINES, len(self._lines) + 1)):
            text = self._lines[n - 1]
            match = re.compile(pattern).search(text, col - 1 if n == line else 0)
            if match:
                return n, match.start(1) + 1
        return line, col


#: Values tried in turn for a typed column of a placeholder record (the first that parses).
_SAMPLE_TEXTS = ("2000-01-01T00:00:00Z", "2000-01-01", "1", "UTC")


def _sample_record(source: Source, entity: str) -> Record:
    for record in source.iter_records(entity):
        return record
    # No rows yet (a CRM without complaints): typed placeholders, so that templates formatting
    # a date or an amount are checked rather than failing on an empty text.
    fields: dict[str, Any] = dict.fromkeys(REQUIRED_COLUMNS.get(entity, ()), "")
    for column, parse in FIELD_TYPES.get(entity, {}).items():
        fields[column] = next(v for v in map(_parsed(parse), _SAMPLE_TEXTS) if v is not None)
    return Record(entity, "sample", fields)


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def attempt(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            return None

    return attempt


def _check_template(
    rule: Rule,
    name: str,
    renderer: TemplateRenderer,
    source: Source,
    sample: Record,
    channel: str = "email",
) -> Iterator[Problem]:
    locales = renderer.locales(name)
    now = datetime.now(UTC)
    occurrence = Occurrence(rule.id, sample.entity, sample.id, example_tag(rule, now, "check"), now)
    records = subject_records(rule, sample, source)
    # No purchases or complaints yet (a placeholder sample) still has a customer to render for.
    records.setdefault("customer", _sample_record(source, "customer"))
    spec = rule.trigger.spec
    if isinstance(spec, EventTrigger):
        records["event"] = Record("event", "sample", {"type": spec.type, "at": None, "data": {}})
    context = message_context(
        records,
        occurrence=occurrence,
        company={"name": "", "address": ""},
    )
    context["unsubscribe"] = SAMPLE_UNSUBSCRIBE
    for locale in locales:
        try:
            if channel == "webhook":
                render_payload(renderer, name, locale, context)
            else:
                renderer.render(name, locale, context)
        except TemplateError as exc:
            yield Problem(
                renderer.templates_dir / exc.template, exc.line, 1 if exc.line else 0, exc.reason
            )


def _check_template_files(renderer: TemplateRenderer) -> Iterator[Problem]:
    """Every ``*.j2`` file compiles (including layouts and unused locales)."""
    root = renderer.templates_dir
    if not root.is_dir():
        yield Problem(root, 0, 0, "templates folder does not exist; set CRM_TEMPLATES_DIR")
        return
    for path in sorted(root.rglob("*.j2")):
        try:
            renderer.parse(path.relative_to(root).as_posix())
        except TemplateError as exc:
            yield Problem(path, exc.line, 1 if exc.line else 0, exc.reason)
