"""Scheduler scale: one planning pass over a synthetic CRM at growing sizes, time and peak RSS.

    .venv/bin/python bench/scheduler_scale.py                       # 10k, 100k, 1M (CSV)
    .venv/bin/python bench/scheduler_scale.py --sizes 1000,10000    # quick check
    .venv/bin/python bench/scheduler_scale.py --postgres postgresql://postgres@127.0.0.1:5432
    .venv/bin/python bench/scheduler_scale.py --source 'SPEC'       # another source (see below)

What is measured is what ``crm-worker plan`` does: ``worker.planning.plan.plan`` over every rule in
``rules/``, the iterator consumed to the end, nothing claimed or queued. Each size runs in a
fresh subprocess so peak RSS (``ru_maxrss``) belongs to that size alone; "base" is the RSS after
imports and rule loading, before the pass.

Each size has customers = purchases = size and complaints = size / 10 (the issue's 1M / 1M /
100k at full size), generated once into ``--data`` (``var/bench-crm-<size>``) and reused.
``--source`` replaces the CSV folder by any ``CRM_SOURCE`` value, with ``{size}`` replaced by
the size. ``--postgres SERVER`` measures the SQL source on PostgreSQL: each size is loaded
once (``synthetic_crm.load_postgres``) into the database ``crm_bench_<size>`` on SERVER and
read through ``bench/queries.yaml``, as an operator's mapping file would.

Targets (issue 7): the 1M pass within 15 s and 500 MB peak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_crm import POSTGRES_QUERIES, load_postgres, write_crm  # noqa: E402

DEFAULT_NOW = "2026-06-15T12:00:00Z"
TARGET_S = 15.0
TARGET_MB = 500.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(source: str, now_text: str, queries: str | None) -> None:
    """One pass in this process; prints one JSON line."""
    from worker.localtime import parse_instant
    from worker.planning.plan import PlannedDelivery, plan
    from worker.runtime import Runtime
    from worker.settings import load_settings

    env = {
        **os.environ,
        "CRM_SOURCE": source,
        "CRM_RULES_DIR": str(REPO / "rules"),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
        **({"CRM_SOURCE_QUERIES": queries} if queries else {}),
    }
    runtime = Runtime(load_settings(env))
    now = parse_instant(now_text)
    runtime.catalog.refresh()
    rules = [rule.id for rule in runtime.catalog if rule.enabled]
    base = _rss_mb()
    planned: Counter[str] = Counter()
    skipped = 0
    started = time.perf_counter()
    for item in plan(
        runtime.catalog,
        runtime.source,
        now,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    ):
        if isinstance(item, PlannedDelivery):
            planned[item.rule_id] += 1
        else:
            skipped += 1
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "peak_mb": _rss_mb(),
        "base_mb": base,
        "planned": dict(planned),
        "skipped": skipped,
        "rules": rules,
    }
    print(json.dumps(result))


def ensure_data(data: Path, size: int) -> Path:
    folder = data / f"bench-crm-{size}"
    if not (folder / "complaints.csv").exists():
        print(f"generating {folder} …", file=sys.stderr, flush=True)
        write_crm(folder, customers=size, purchases=size, complaints=size // 10)
    return folder


def ensure_postgres(server: str, data: Path, size: int) -> str:
    """The SQLAlchemy URL of ``crm_bench_<size>`` on ``server``, loaded once from the CSVs."""
    import subprocess as sp

    dsn = f"{server.rstrip('/')}/crm_bench_{size}"
    loaded = sp.run(
        ["psql", dsn, "-tAc", "SELECT count(*) FROM bench_contacts"], capture_output=True, text=True
    )
    if loaded.returncode != 0 or loaded.stdout.strip() != str(size):
        print(f"loading {dsn} …", file=sys.stderr, flush=True)
        load_postgres(ensure_data(data, size), dsn)
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="customers per run")
    parser.add_argument("--data", type=Path, default=REPO / "var", help="where CRMs are kept")
    parser.add_argument("--now", default=DEFAULT_NOW, help="instant of the pass")
    parser.add_argument("--source", help="CRM_SOURCE instead of the CSV folder ({size} = size)")
    parser.add_argument("--postgres", metavar="SERVER", help="PostgreSQL (postgresql://…:port)")
    parser.add_argument("--queries", help=argparse.SUPPRESS)
    parser.add_argument("--child", metavar="SOURCE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.now, args.queries)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    where = f"PostgreSQL on {args.postgres}" if args.postgres else args.source or "CSV folders"
    print(f"planning pass at {args.now}, each size in a fresh process; source: {where}")
    header = f"{'customers':>10} {'seconds':>8} {'rows/s':>9} {'peak MB':>8} {'base MB':>8}"
    rows = []
    for size in sizes:
        queries: list[str] = []
        if args.postgres:
            source = ensure_postgres(args.postgres, args.data, size)
            queries = ["--queries", str(POSTGRES_QUERIES)]
        elif args.source:
            source = args.source.format(size=size)
        else:
            source = str(ensure_data(args.data, size))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", source, "--now", args.now, *queries],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"the pass at size {size} failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((size, result))
    print(f"rules: {', '.join(rows[0][1]['rules'])}")
    print(header)
    for size, r in rows:
        print(
            f"{size:>10,} {r['seconds']:>8.2f} {size / r['seconds']:>9,.0f}"
            f" {r['peak_mb']:>8.0f} {r['base_mb']:>8.0f}"
            f"   planned {sum(r['planned'].values()):,} {r['planned']}, skipped {r['skipped']:,}"
        )
    for (small, a), (large, b) in itertools.pairwise(rows):
        growth = (b["seconds"] / a["seconds"]) / (large / small)
        print(
            f"time growth {small:,} → {large:,}: x{b['seconds'] / a['seconds']:.1f}"
            f" for x{large / small:.0f} the data ({growth:.2f} of linear)"
        )
    size, r = rows[-1]
    if size >= 1_000_000:
        ok = r["seconds"] <= TARGET_S and r["peak_mb"] <= TARGET_MB
        print(
            f"target at 1M: ≤ {TARGET_S:.0f} s and ≤ {TARGET_MB:.0f} MB: "
            f"{r['seconds']:.1f} s, {r['peak_mb']:.0f} MB → {'met' if ok else 'NOT met'}"
        )
    print(f"measured {datetime.now().astimezone().isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
