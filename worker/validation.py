"""``crm-worker check``: everything a sales manager can get wrong, found before customers see it.

Rules are validated by their loader (YAML and models); this module adds what needs the other
parts: templates exist in the default locale and compile, each template renders for a sample
record in every locale (typos in field names, sandbox violations, render limits), conditions
compile and use known names, and recipients point at fields the source has.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.conditions import ConditionError, compile_condition, condition_fields, condition_names
from worker.context import message_context
from worker.errors import Problem, RuleError, SourceError, TemplateError
from worker.payload import WEBHOOK_JSON, WEBHOOK_TEXT, render_payload
from worker.planning import subject_records
from worker.rendering import PARTS, TemplateRenderer
from worker.rules.catalog import RuleCatalog
from worker.rules.loader import parse_yaml
from worker.rules.models import EventTrigger, Rule
from worker.sources.base import Record, Source
from worker.sources.schema import FIELD_TYPES, REQUIRED_COLUMNS
from worker.triggers import Occurrence, example_tag

#: Names a condition or template may use besides entities.
CONTEXT_NAMES = frozenset({"occurrence", "company"})
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
    for rule in catalog:
        problems.extend(_check_rule(rule, catalog, renderer, source))
        if webhooks is not None and rule.enabled:
            problems.extend(_check_webhooks(rule, catalog, webhooks))
    problems.extend(_check_template_files(renderer))
    return sorted(set(problems))


def _check_rule(
    rule: Rule, catalog: RuleCatalog, renderer: TemplateRenderer, source: Source
) -> Iterator[Problem]:
    path = catalog.path_of(rule.id) or catalog.rules_dir / f"{rule.id}.yaml"
    where = _Where(path)
    spec = rule.trigger.spec
    entity = spec.entity
    kind = rule.trigger.kind
    # The entities a message about this record sees: the record, its customer, an event.
    names = {entity, "customer"} | ({"event"} if isinstance(spec, EventTrigger) else set())
    columns: dict[str, frozenset[str]] = {}
    for name in sorted(names - {"event"}):
        try:
            columns[name] = source.columns(name) | {"id"}
        except SourceError as exc:
            line, col = where(("trigger", kind))
            yield Problem(path, line, col, f"cannot read {name} data to check this rule: {exc}")
            return
    for key in ("field", "resolved"):
        value = getattr(spec, key, None)
        if not isinstance(value, str):
            continue
        target, _, name = value.partition(".")
        known = columns.get(target, frozenset())
        if known and name not in known:
            line, col = where(("trigger", kind, key))
            yield Problem(
                path,
                line,
                col,
                f"trigger.{kind}.{key}: {value} is not in the {target} data"
                f"{_did_you_mean(name, known)}",
            )
    if rule.when:
        line, col = where(("when",))
        try:
            compile_condition(rule.when)
            for name in sorted(condition_names(rule.when) - names - CONTEXT_NAMES):
                yield Problem(
                    path,
                    line,
                    col,
                    f"condition uses unknown name {name!r}; it can use "
                    f"{', '.join(sorted(names | CONTEXT_NAMES))}",
                )
            for target, name in sorted(condition_fields(rule.when)):
                known = columns.get(target, frozenset())
                if known and name not in known:
                    yield Problem(
                        path,
                        line,
                        col,
                        f"condition uses {target}.{name}, which is not in the {target} data"
                        f"{_did_you_mean(name, known)}",
                    )
        except ConditionError as exc:
            yield Problem(path, line, col, str(exc))
    sample = _sample_record(source, entity)
    for n, action in enumerate(rule.send):
        target, _, name = action.to.partition(".")
        line, col = where(("send", n, "to"))
        if target not in names - {"event"}:
            yield Problem(
                path,
                line,
                col,
                f"send[{n}].to: {action.to} is not a field of this rule's {entity} or its "
                f"customer; write e.g. customer.email",
            )
        elif columns.get(target) and name not in columns[target]:
            yield Problem(
                path,
                line,
                col,
                f"recipient field {action.to} is not in the {target} data"
                f"{_did_you_mean(name, columns[target])}",
            )
        yield from _check_template(rule, action.template, renderer, source, sample, action.channel)


def _check_webhooks(
    rule: Rule, catalog: RuleCatalog, webhooks: Collection[str]
) -> Iterator[Problem]:
    path = catalog.path_of(rule.id) or catalog.rules_dir / f"{rule.id}.yaml"
    where = _Where(path)
    for n, action in enumerate(rule.send):
        if action.webhook is not None and action.webhook not in webhooks:
            known = ", ".join(sorted(webhooks)) or "none"
            line, col = where(("send", n, "webhook"))
            yield Problem(
                path,
                line,
                col,
                f"webhook {action.webhook!r} is not in CRM_WEBHOOKS (configured: {known})",
            )


def _did_you_mean(name: str, known: frozenset[str]) -> str:
    guess = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {guess[0]!r}?" if guess else ""


class _Where:
    """Line and column of a key in a rule file (1, 1 when the file cannot be read again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._positions: Any = None

    def __call__(self, loc: tuple[str | int, ...]) -> tuple[int, int]:
        if self._positions is None:
            try:
                self._positions = parse_yaml(self.path.read_text(encoding="utf-8"), self.path)[1]
            except (OSError, UnicodeDecodeError, RuleError):
                return (1, 1)
        position: tuple[int, int] = self._positions.nearest(loc, prefer_key=False)
        return position


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
    folder = renderer.templates_dir / name
    locales = renderer.locales(name)
    if renderer.default_locale not in locales:
        yield Problem(
            folder,
            0,
            0,
            f"rule {rule.id}: template {name!r} needs a {renderer.default_locale}/ folder "
            f"with {' or '.join(WEBHOOK_PARTS) if channel == 'webhook' else ', '.join(PARTS)} "
            f"(found: {', '.join(locales) or 'nothing'})",
        )
        return
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
