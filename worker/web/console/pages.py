"""What each console page shows, gathered from the same parts the CLI uses (no new logic).

============================  ===============================================================
``/rules``                    :func:`rules_overview`: ``check``'s diagnostics per file, the
                              trigger in words, sends in the last and next 30 days
``/rules/<id>``               :func:`rule_page`: the file's lines with ``check``'s diagnostics
``/upcoming?days=N``          :func:`worker.authoring.upcoming.upcoming`
``/customers/<id>``           :func:`customer_page`: ``plan --customer ID --explain`` and the
                              customer's deliveries in the log
``/preview/<rule>/<cust>``    :func:`previews`: ``crm-worker preview``
``/deliveries``               :func:`deliveries_page`: the delivery log, filtered, and the
                              work in progress (``crm-worker report``)
============================  ===============================================================

Each function is synchronous (Redis, the CRM data, templates): the app runs it in a thread.
"""

from __future__ import annotations

import email.policy
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import message_from_bytes
from pathlib import Path

from worker.authoring.explanation import Explanation
from worker.authoring.preview import PREVIEW_HEADERS, Preview, build_previews
from worker.authoring.rule_edit import digest, rule_files
from worker.authoring.upcoming import Upcoming, upcoming
from worker.authoring.validation import check_all
from worker.authoring.wording import describe_trigger
from worker.constants import CONSOLE_DELIVERIES_SHOWN, CONSOLE_RULE_SPAN, SWEEP_INTERVALS_OF_GRACE
from worker.errors import Problem, RuleError
from worker.planning.plan import Skip
from worker.records.backlog import Backlog, read_backlog
from worker.records.delivery_log import LogEntry, summarize
from worker.records.delivery_state import delivery_states
from worker.records.suppression import MARKETING_ONLY
from worker.rules.loader import load_rule_file
from worker.rules.models import SLUG_PATTERN, EventTrigger, Rule
from worker.runtime import Runtime

#: The customer's fields /customers/<id> shows above the explanation.
CUSTOMER_FIELDS = ("first_name", "last_name", "email", "locale", "timezone", "email_opt_in")
#: The delivery log's outcomes, for the state filter of /deliveries.
LOG_STATES = ("sent", "skipped", "failed", "unknown", "bounced")


@dataclass
class RuleRow:
    """One rule file on /rules."""

    path: Path
    rule_id: str
    status: str  # valid | invalid | disabled
    description: str = ""
    trigger: str = ""
    problems: list[Problem] = field(default_factory=list)
    #: True when the file is invalid but an earlier valid version of the rule is in force.
    kept: bool = False
    sent_before: int = 0
    due_after: int = 0
    #: An ``event`` rule: it sends when the CRM reports an event, which no calendar foresees.
    on_event: bool = False


def problems_by_file(runtime: Runtime) -> tuple[dict[Path, list[Problem]], list[Problem]]:
    """``crm-worker check``'s problems: per rule file, and the rest (templates)."""
    found = check_all(
        runtime.catalog,
        runtime.renderer,
        runtime.source,
        webhooks=runtime.settings.webhooks.keys(),
    )
    rules_dir = runtime.settings.rules_dir
    per_file: dict[Path, list[Problem]] = defaultdict(list)
    others = []
    for problem in found:
        if problem.path.parent == rules_dir:
            per_file[problem.path].append(problem)
        else:
            others.append(problem)
    return per_file, others


def written_rules(runtime: Runtime) -> dict[Path, Rule]:
    """Each file's rule as written now (files that do not load are missing)."""
    return dict(runtime.catalog.written())


def rule_id_of(path: Path, written: dict[Path, Rule]) -> str:
    """The id a file is shown under: its rule's id, else (a file that does not load) its name."""
    rule = written.get(path)
    return rule.id if rule is not None else path.stem


def reload_rule_id(runtime: Runtime, path: Path) -> str:
    """Reread the rules folder (after a save) and say which id ``path`` is shown under now."""
    runtime.catalog.refresh()
    return rule_id_of(path, written_rules(runtime))


def find_rule_file(runtime: Runtime, rule_id: str) -> Path | None:
    """The rule file shown under ``rule_id``; only files of the rules folder are ever found
    (the id is compared, never joined into a path), so ``../`` leads nowhere."""
    if not re.match(SLUG_PATTERN, rule_id):
        return None
    runtime.catalog.refresh()
    written = written_rules(runtime)
    files = rule_files(runtime.settings.rules_dir)
    for path in files:
        if rule_id_of(path, written) == rule_id:
            return path
    in_force = runtime.catalog.path_of(rule_id)
    return in_force if in_force in files else None


def rules_overview(
    runtime: Runtime, now: datetime, ahead: Counter[str]
) -> tuple[list[RuleRow], list[Problem]]:
    """Every rule file with its status and counts (``ahead``: sends per rule in the next
    ``CONSOLE_RULE_SPAN``, see :func:`forecast`); and the templates' problems."""
    per_file, template_problems = problems_by_file(runtime)
    written = written_rules(runtime)
    sent = summarize(runtime.delivery_log.read(since=now - CONSOLE_RULE_SPAN)).counts
    rows = []
    for path in rule_files(runtime.settings.rules_dir):
        rule = written.get(path)
        rule_id = rule_id_of(path, written)
        problems = per_file.get(path, [])
        in_force = runtime.catalog.get(rule_id)
        if problems:
            status = "invalid"
        elif rule is not None and not rule.enabled:
            status = "disabled"
        else:
            status = "valid"
        shown = rule or in_force
        rows.append(
            RuleRow(
                path=path,
                rule_id=rule_id,
                status=status,
                description=shown.description if shown else "",
                trigger=describe_trigger(shown) if shown else "",
                problems=problems,
                kept=bool(problems) and in_force is not None,
                sent_before=sent.get((rule_id, "sent"), 0),
                due_after=ahead.get(rule_id, 0),
                on_event=shown is not None and isinstance(shown.trigger.spec, EventTrigger),
            )
        )
    return rows, template_problems


def forecast(runtime: Runtime, now: datetime) -> Counter[str]:
    """Sends per rule in the next ``CONSOLE_RULE_SPAN`` (a plan over every record)."""
    return upcoming_for(runtime, now, now + CONSOLE_RULE_SPAN).sends_by_rule()


def upcoming_for(runtime: Runtime, start: datetime, end: datetime) -> Upcoming:
    runtime.catalog.refresh()
    return upcoming(
        runtime.catalog,
        runtime.source,
        start,
        end,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
        ledger=runtime.ledger,
        suppression=runtime.suppression,
    )


@dataclass
class RulePage:
    """A rule file's text with ``check``'s diagnostics by line."""

    path: Path
    rule_id: str
    text: str
    digest: str
    problems: list[Problem]
    rule: Rule | None
    trigger: str

    def lines(self) -> list[tuple[int, str, list[Problem]]]:
        return annotated_lines(self.text, self.problems)


def annotated_lines(text: str, problems: Iterable[Problem]) -> list[tuple[int, str, list[Problem]]]:
    """Each line of ``text`` (numbered from 1) with the problems reported on it; problems
    about the whole file (line 0) or past its end stand on the first or last line."""
    lines = text.removeprefix("\ufeff").splitlines() or [""]
    by_line: dict[int, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_line[min(max(problem.line, 1), len(lines))].append(problem)
    return [(n, line, by_line.get(n, [])) for n, line in enumerate(lines, start=1)]


def rule_page(runtime: Runtime, path: Path) -> RulePage:
    per_file, _ = problems_by_file(runtime)
    text = path.read_text(encoding="utf-8", errors="replace")
    written = written_rules(runtime)
    rule = written.get(path)
    try:
        rule = rule or load_rule_file(path)
    except RuleError:  # a file that does not load: shown with its diagnostics instead
        rule = None
    shown = rule or runtime.catalog.get(path.stem)
    return RulePage(
        path=path,
        rule_id=rule_id_of(path, written),
        text=text,
        digest=digest(path.read_text(encoding="utf-8", errors="surrogateescape")),
        problems=per_file.get(path, []),
        rule=rule,
        trigger=describe_trigger(shown) if shown else "",
    )


@dataclass
class CustomerPage:
    customer_id: str
    known: bool
    notes: list[str]
    explanations: list[Explanation]
    history: list[LogEntry]
    email: str
    #: What the CRM says about the customer (name, address, language, zone, opt-in).
    fields: list[tuple[str, str]] = field(default_factory=list)
    #: The suppression list's entry for the customer's address, in words; empty: none.
    suppressed: str = ""


def customer_page(runtime: Runtime, customer_id: str, now: datetime) -> CustomerPage:
    """``plan --customer ID --explain`` at ``now``, and the log's entries for the customer:
    deliveries about the customer record and to the customer's address (newest first)."""
    customer = runtime.source.get("customer", customer_id)
    if customer is None:
        return CustomerPage(customer_id, False, [], [], [], "")
    runtime.catalog.refresh()
    explainer = runtime.explainer
    notes = explainer.data_notes(customer_id)
    lines = list(explainer.explain(customer_id, now))
    address = str(customer["email"] or "").strip().lower()
    own = f":customer:{customer_id}:"
    keys = {line.key for line in lines if line.key}
    history = [
        entry
        for entry in runtime.delivery_log.read()
        if own in entry.key
        or entry.key in keys
        or (address and entry.recipient.strip().lower() == address)
    ]
    history.reverse()
    shown = [(name, str(customer[name])) for name in CUSTOMER_FIELDS if customer[name] is not None]
    entry = runtime.suppression.entry(address) if address else None
    suppressed = ""
    if entry is not None:
        scope = "marketing mail" if entry.scope == MARKETING_ONLY else "all mail"
        suppressed = f"{scope} since {entry.at:%Y-%m-%d %H:%M} UTC: {entry.reason}"
    return CustomerPage(customer_id, True, notes, lines, history, address, shown, suppressed)


@dataclass
class ShownPreview:
    """One message of a preview, ready for the page."""

    item: Preview
    state: str
    headers: list[tuple[str, str]]
    body: str  # a webhook's body; empty for a mail


def previews(
    runtime: Runtime, rule_id: str, customer_id: str, now: datetime
) -> tuple[list[ShownPreview], list[Skip]]:
    """``crm-worker preview RULE --customer ID --now NOW``: the messages and the skips.
    Raises :class:`~worker.errors.PreviewError` / :class:`~worker.errors.TemplateError`."""
    items = build_previews(runtime.deliverer, rule_id, customer_id, now)
    shown = [item for item in items if isinstance(item, Preview)]
    states = delivery_states(
        runtime.ledger, runtime.suppression, [(i.planned.key, i.planned.to) for i in shown]
    )
    result = []
    for item, state in zip(shown, states, strict=True):
        if item.message is None:
            body = item.outgoing.data.decode("utf-8", "replace")
            headers = [("Content-Type", item.outgoing.content_type)]
        else:
            mail = message_from_bytes(item.outgoing.data, policy=email.policy.default)
            headers = [(name, str(mail[name])) for name in PREVIEW_HEADERS if mail[name]]
            body = ""
        # The note speaks of the command's option; here the page's "As of" field does that.
        note = item.note.replace("use --now to pick the day", 'pick the day with "As of"')
        result.append(ShownPreview(replace(item, note=note), state.describe(), headers, body))
    return result, [item for item in items if isinstance(item, Skip)]


@dataclass
class DeliveriesPage:
    entries: list[LogEntry]
    total: int
    backlog: Backlog
    retryable: int


def deliveries_page(
    runtime: Runtime,
    *,
    since: datetime,
    until: datetime | None = None,
    rule: str | None,
    state: str | None,
    now: datetime,
) -> DeliveriesPage:
    """The log from ``since`` to ``until`` (newest first, at most
    ``CONSOLE_DELIVERIES_SHOWN``) of ``rule`` and ``state`` when given; the work in progress;
    how many deliveries retry-failed would queue again (each failed or unknown delivery, by
    its latest outcome)."""
    entries = [
        entry
        for entry in runtime.delivery_log.read(since=since, rule=rule)
        if until is None or entry.at <= until
    ]
    latest = summarize(entries)
    retryable = len(latest.problems)
    if state:
        entries = [entry for entry in entries if entry.status == state]
    entries.reverse()
    grace_s = runtime.settings.sweep_interval_s * SWEEP_INTERVALS_OF_GRACE
    backlog = read_backlog(runtime.redis, now=now.timestamp(), grace_s=grace_s)
    return DeliveriesPage(entries[:CONSOLE_DELIVERIES_SHOWN], len(entries), backlog, retryable)
