"""Render cost: messages rendered per second for each template and locale.

    .venv/bin/python bench/render.py                 # every templates/<name>/<locale>/
    .venv/bin/python bench/render.py --seconds 0.5   # quicker

For each template folder in ``templates/`` and each of its locale folders: render subject, text
and HTML (``TemplateRenderer.render``, sandbox, deadline and size checks included) in a loop on
one thread, with contexts of real shape — the deliveries the rules in ``rules/`` plan over a
small synthetic CRM (every rule's window widened to a year so each one finds work). The second
figure adds composing the MIME message (``Deliverer.build``: render + headers + bytes), which
is what a worker does per message before SMTP. Templates no rule uses are listed and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_crm import REFERENCE_DAY, write_crm  # noqa: E402

CONTEXTS_PER_TEMPLATE = 200


def rate(fn, contexts: list, seconds: float) -> float:  # type: ignore[no-untyped-def, type-arg]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for context in contexts:
            fn(context)
        done += len(contexts)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per template and locale")
    parser.add_argument("--customers", type=int, default=3000, help="size of the synthetic CRM")
    args = parser.parse_args()

    from worker.messages.unsubscribe import NO_LINKS_CONTEXT
    from worker.planning.plan import PlannedDelivery, plan
    from worker.runtime import Runtime
    from worker.settings import load_settings

    crm = Path(tempfile.mkdtemp(prefix="bench-render-"))
    write_crm(crm, customers=args.customers, purchases=args.customers, complaints=args.customers)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_SOURCE": str(crm),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_UNSUBSCRIBE_SECRET": "bench",
            "CRM_OUTBOX_DIR": str(crm / "outbox"),
        }
    )
    runtime = Runtime(load_settings(env))
    runtime.catalog.refresh()
    now = datetime.combine(REFERENCE_DAY, datetime.min.time(), UTC)
    year = timedelta(days=365)
    rules = [rule.model_copy(update={"grace": year}) for rule in runtime.catalog if rule.enabled]
    planned: dict[str, list[PlannedDelivery]] = {}
    for item in plan(
        rules,  # type: ignore[arg-type]  # plan only iterates the catalog
        runtime.source,
        now,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    ):
        if isinstance(item, PlannedDelivery):
            found = planned.setdefault(item.action.template, [])
            if len(found) < CONTEXTS_PER_TEMPLATE:
                found.append(item)

    renderer, deliverer = runtime.renderer, runtime.deliverer
    templates = sorted(
        p.name for p in (REPO / "templates").iterdir() if p.is_dir() and not p.name.startswith("_")
    )
    print(f"one thread; {args.seconds} s per row; contexts from {args.customers:,}-row CRM")
    print(f"{'template':<24} {'locale':<7} {'rendered/s':>11} {'+MIME/s':>9}  parts")
    for name in templates:
        items = planned.get(name)
        if not items:
            print(f"{name:<24} (no rule in rules/ plans a message with it: skipped)")
            continue
        for locale in renderer.locales(name):
            contexts = []
            for item in items:
                links = deliverer.unsubscribe_links(item)
                unsubscribe = links.as_context() if links else NO_LINKS_CONTEXT
                contexts.append({**item.context, "unsubscribe": unsubscribe})
            one = renderer.render(name, locale, contexts[0])
            rendered = rate(partial(renderer.render, name, locale), contexts, args.seconds)
            localized = [dataclasses.replace(item, locale=locale) for item in items]
            built = rate(lambda p: deliverer.build(p, now), localized, args.seconds)
            sizes = f"{len(one.subject)}+{len(one.text)}+{len(one.html)} chars"
            print(f"{name:<24} {locale:<7} {rendered:>11,.0f} {built:>9,.0f}  {sizes}")
    print(f"measured {datetime.now().astimezone().isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
