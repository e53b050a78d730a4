"""``crm-worker check``: everything a sales manager can get wrong, found before customers see it.

Rules are validated by their loader (YAML and models); this module adds what needs the other
parts: templates exist in the default locale and compile, each template renders for a sample
record in every locale (typos in field names, sandbox violations, render limits), conditions
compile and use known names, and recipients point at fields the source has.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import UTC, datetime

from worker.conditions import ConditionError, compile_condition, condition_names
from worker.context import message_context
from worker.errors import Problem, SourceError, TemplateError
from worker.payload import WEBHOOK_JSON, WEBHOOK_TEXT, render_payload
from worker.planning import subject_records
from worker.rendering import PARTS, TemplateRenderer
from worker.rules.catalog import RuleCatalog
from worker.rules.models import Rule
from worker.sources.base import Record, Source
from worker.sources.schema import REQUIRED_COLUMNS
from worker.triggers import Occurrence

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
    names in CRM_WEBHOOKS), also every rule that posts to a webhook not configured."""
    problems = list(catalog.refresh())
    for rule in catalog:
        problems.extend(_check_rule(rule, catalog, renderer, source))
        if webhooks is not None:
            problems.extend(_check_webhooks(rule, catalog, webhooks))
    problems.extend(_check_template_files(renderer))
    return sorted(set(problems))


def _check_rule(
    rule: Rule, catalog: RuleCatalog, renderer: TemplateRenderer, source: Source
) -> Iterator[Problem]:
    path = catalog.path_of(rule.id) or catalog.rules_dir / f"{rule.id}.yaml"
    entity = rule.trigger.spec.entity
    try:
        columns = source.columns(entity) | {"id"}
    except SourceError as exc:
        yield Problem(path, 1, 1, f"cannot read {entity} data to check this rule: {exc}")
        return
    field = rule.trigger.spec.field.partition(".")[2]
    if columns and field not in columns:
        yield Problem(
            path, 1, 1, f"trigger field {rule.trigger.spec.field} is not in the {entity} data"
        )
    if rule.when:
        try:
            compile_condition(rule.when)
            unknown = condition_names(rule.when) - set(REQUIRED_COLUMNS) - CONTEXT_NAMES
            for name in sorted(unknown):
                yield Problem(path, 1, 1, f"condition uses unknown name {name!r}")
        except ConditionError as exc:
            yield Problem(path, 1, 1, str(exc))
    sample = _sample_record(source, entity)
    for action in rule.send:
        target, _, name = action.to.partition(".")
        if target == entity and columns and name not in columns:
            yield Problem(path, 1, 1, f"recipient field {action.to} is not in the {entity} data")
        yield from _check_template(rule, action.template, renderer, source, sample, action.channel)


def _check_webhooks(
    rule: Rule, catalog: RuleCatalog, webhooks: Collection[str]
) -> Iterator[Problem]:
    path = catalog.path_of(rule.id) or catalog.rules_dir / f"{rule.id}.yaml"
    for action in rule.send:
        if action.webhook is not None and action.webhook not in webhooks:
            known = ", ".join(sorted(webhooks)) or "none"
            yield Problem(
                path,
                1,
                1,
                f"webhook {action.webhook!r} is not in CRM_WEBHOOKS (configured: {known})",
            )


def _sample_record(source: Source, entity: str) -> Record:
    for record in source.iter_records(entity):
        return record
    fields = dict.fromkeys(REQUIRED_COLUMNS.get(entity, ()), "")
    return Record(entity, "sample", fields)


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
    occurrence = Occurrence(rule.id, sample.entity, sample.id, "check", datetime.now(UTC))
    context = message_context(
        subject_records(rule, sample, source),
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
