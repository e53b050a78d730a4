"""Planning ahead on PostgreSQL: the full horizon pass, then passes that read only changes.

    .venv/bin/python bench/plan_ahead.py --customers 10000000          # 10M / 10M / 1M
    .venv/bin/python bench/plan_ahead.py --customers 1000000 --keep    # keep the database

The CRM is generated inside PostgreSQL with ``generate_series`` (no rows cross the wire):
``--customers`` customers, as many purchases and a tenth as many complaints, distributed as
``synthetic_crm.py`` distributes them (birthdays 1940–2007, 17 weighted zones, 85 % opted in,
purchases over three years, complaints over 120 days, 70 % resolved), in the tables
``bench_contacts``, ``bench_orders``, ``bench_tickets`` plus an ``updated_at`` column each
(indexed, as a CRM that offers change tracking would), in the database
``planahead_bench_<customers>`` (dropped at the end unless ``--keep``; reused when kept).
``bench/plan_ahead_queries.yaml`` maps it with ``changed_since: updated_at``.

In one process, through the product's own ``Runtime`` and a private ``redis-server``:

1. the full horizon pass: ``Scheduler.run_planned_pass`` on an empty due-index (plan 36 h
   ahead, claim and queue what is due now): time and peak RSS (``ru_maxrss``);
2. change passes a minute apart, after 0, 1,000 and 10,000 records were changed in the CRM
   (a third each: customers' birthday/zone/opt-in, purchases' dates, complaints resolved):
   time, records re-planned, and the rows PostgreSQL read for the pass, from
   ``pg_stat_user_tables`` (``seq_scan``, ``seq_tup_read``, ``idx_scan``, ``idx_tup_fetch``
   of the three tables; the pass's connections are closed before reading them, so their
   counters are flushed).

Targets (issue 21): the full pass at 10M ≤ 150 s and ≤ 1 GB; a pass with 1,000 changed
records ≤ 1 s; rows read per change pass proportional to the changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUERIES = Path(__file__).resolve().parent / "plan_ahead_queries.yaml"
NOW = "2026-11-25T12:00:00Z"
REFERENCE = "2026-11-25 00:00:00+00"
TABLES = ("bench_contacts", "bench_orders", "bench_tickets")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_crm import LOCALES, ZONES  # noqa: E402


def _weighted_array(pairs: list[tuple[str, int]]) -> str:
    """A SQL array with each value repeated by its weight: a uniform pick is weighted."""
    values = [value for value, weight in pairs for _ in range(weight)]
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pick(array: str) -> str:
    return f"({array})[1 + floor(random() * cardinality({array}))::int]"


def generate_sql(customers: int) -> str:
    purchases, complaints = customers, max(customers // 10, 1)
    zones, locales = _weighted_array(ZONES), _weighted_array(LOCALES)
    first = "ARRAY['Olivia','James','Jürgen','Anna','Lukas','María','José','Sofía','Noah','Lena']"
    last = "ARRAY['Smith','Müller','García','Jones','Schneider','Fernández','Weber','López']"
    tiers = "ARRAY['bronze','bronze','bronze','silver','silver','gold']"
    products = "ARRAY['Espresso machine','Road bike','Standing desk','Headphones','Hiking boots']"
    subjects = "ARRAY['Wrong size','Invoice error','Late delivery','Damaged parcel','Missing part']"
    ref = f"timestamptz '{REFERENCE}'"
    return f"""
SET synchronous_commit = off;
SELECT setseed(0.21);
CREATE TABLE bench_contacts (contact_id bigint, mail text, given_name text, family_name text,
  date_of_birth date, lang text, tz text, owner_email text, newsletter boolean, tier text,
  updated_at timestamptz NOT NULL);
INSERT INTO bench_contacts
SELECT g, 'customer' || g || '@example.com', {_pick(first)}, {_pick(last)},
       date '1940-01-01' + floor(random() * (date '2007-12-31' - date '1940-01-01' + 1))::int,
       {_pick(locales)}, {_pick(zones)}, 'manager' || floor(random() * 20)::int || '@example.com',
       random() < 0.85, {_pick(tiers)}, {ref} - random() * interval '365 days'
  FROM generate_series(1, {customers}) AS g;
CREATE TABLE bench_orders (order_no text, contact_id bigint, item text, amount numeric(10, 2),
  currency text, ordered_at timestamptz, shipped_at timestamptz, updated_at timestamptz NOT NULL);
INSERT INTO bench_orders
SELECT 'P' || g, 1 + floor(random() * {customers})::bigint, {_pick(products)},
       round((5 + random() * 895)::numeric, 2), 'EUR', o,
       CASE WHEN random() < 0.9 AND o + d < {ref} THEN o + d END,
       {ref} - random() * interval '365 days'
  FROM (SELECT g, {ref} - random() * interval '1095 days' AS o,
               (1 + floor(random() * 10)) * interval '1 day'
               + floor(random() * 13) * interval '1 hour' AS d
          FROM generate_series(1, {purchases}) AS g) AS s;
CREATE TABLE bench_tickets (ticket_no text, contact_id bigint, title text, created timestamptz,
  closed timestamptz, updated_at timestamptz NOT NULL);
INSERT INTO bench_tickets
SELECT 'C' || g, 1 + floor(random() * {customers})::bigint, {_pick(subjects)}, o,
       CASE WHEN random() < 0.7 AND o + d < {ref} THEN o + d END,
       {ref} - random() * interval '120 days'
  FROM (SELECT g, {ref} - random() * interval '120 days' AS o,
               floor(random() * 21) * interval '1 day'
               + (1 + floor(random() * 23)) * interval '1 hour' AS d
          FROM generate_series(1, {complaints}) AS g) AS s;
ALTER TABLE bench_contacts ADD PRIMARY KEY (contact_id);
ALTER TABLE bench_orders ADD PRIMARY KEY (order_no);
ALTER TABLE bench_tickets ADD PRIMARY KEY (ticket_no);
CREATE INDEX ON bench_orders (contact_id);
CREATE INDEX ON bench_tickets (contact_id);
CREATE INDEX ON bench_contacts (updated_at);
CREATE INDEX ON bench_orders (updated_at);
CREATE INDEX ON bench_tickets (updated_at);
VACUUM ANALYZE;
"""


def change_sql(count: int, stamp: str, seed: float, customers: int) -> str:
    """Change ``count`` records: a third customers (birthday into the next days, zone,
    opt-in), a third purchases (bought a year ago today), a third complaints (resolved)."""
    third = max(count // 3, 1)
    rest = count - 2 * third
    return f"""
SELECT setseed({seed});
UPDATE bench_contacts SET
    date_of_birth = make_date(1980 + floor(random() * 20)::int, 11, 25 + floor(random() * 3)::int),
    tz = (ARRAY['Europe/Berlin', 'America/New_York', 'Asia/Tokyo', 'UTC'])
         [1 + floor(random() * 4)::int],
    newsletter = NOT newsletter, updated_at = timestamptz '{stamp}'
  WHERE contact_id IN (SELECT 1 + floor(random() * {customers})::bigint
                         FROM generate_series(1, {third}));
UPDATE bench_orders SET ordered_at = timestamptz '{stamp}' - interval '365 days',
    updated_at = timestamptz '{stamp}'
  WHERE order_no IN (SELECT 'P' || (1 + floor(random() * {customers})::bigint)
                       FROM generate_series(1, {third}));
UPDATE bench_tickets SET closed = timestamptz '{stamp}', updated_at = timestamptz '{stamp}'
  WHERE ticket_no IN (SELECT 'C' || (1 + floor(random() * {max(customers // 10, 1)})::bigint)
                        FROM generate_series(1, {rest}));
"""


def psql(dsn: str, script: str) -> str:
    binary = shutil.which("psql")
    if binary is None:
        raise SystemExit("psql not found: install the PostgreSQL client")
    done = subprocess.run(
        [binary, dsn, "-v", "ON_ERROR_STOP=1", "-qtA"],
        input=script,
        text=True,
        capture_output=True,
        env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
    )
    if done.returncode:
        raise SystemExit(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


def ensure_database(server: str, name: str, customers: int) -> float | None:
    """Create and fill the database unless it is there; the seconds it took (None: reused)."""
    found = psql(f"{server}/postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
    if found == "1":
        return None
    psql(f"{server}/postgres", f'CREATE DATABASE "{name}"')
    started = time.perf_counter()
    psql(f"{server}/{name}", generate_sql(customers))
    return time.perf_counter() - started


def table_reads(dsn: str) -> dict[str, int]:
    """Summed counters of the three tables: scans and rows read, by sequential and index."""
    out = psql(
        dsn,
        "SELECT pg_stat_clear_snapshot();"
        "SELECT sum(seq_scan), sum(seq_tup_read), sum(coalesce(idx_scan, 0)),"
        " sum(coalesce(idx_tup_fetch, 0)) FROM pg_stat_user_tables"
        f" WHERE relname IN ({', '.join(repr(t) for t in TABLES)});",
    )
    seq_scan, seq_rows, idx_scan, idx_rows = (int(v) for v in out.splitlines()[-1].split("|"))
    return {"seq_scan": seq_scan, "seq_rows": seq_rows, "idx_scan": idx_scan, "idx_rows": idx_rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--changes", default="0,1000,10000")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    args = parser.parse_args()
    name = f"planahead_bench_{args.customers}"
    dsn = f"{args.postgres}/{name}"
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"load before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    took = ensure_database(args.postgres, name, args.customers)
    counts = psql(dsn, "SELECT (SELECT count(*) FROM bench_contacts) || ' customers, ' ||"
                  " (SELECT count(*) FROM bench_orders) || ' purchases, ' ||"
                  " (SELECT count(*) FROM bench_tickets) || ' complaints'")  # fmt: skip
    size = psql(dsn, f"SELECT pg_size_pretty(pg_database_size('{name}'))")
    made = "reused" if took is None else f"generated in {took:.1f} s"
    print(f"CRM: {counts} ({size}, {made})")
    with tempfile.TemporaryDirectory(prefix="planahead-bench-") as tmp:
        redis_proc, redis_url = start_redis(Path(tmp))
        try:
            run(args, dsn, redis_url)
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    if not args.keep:
        psql(f"{args.postgres}/postgres", f'DROP DATABASE "{name}" WITH (FORCE)')
        print(f"dropped {name}")


def run(args: Any, dsn: str, redis_url: str) -> None:
    from worker.localtime import parse_instant
    from worker.runtime import Runtime
    from worker.settings import load_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_REDIS_URL": redis_url,
            "CRM_SOURCE": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
            "CRM_SOURCE_QUERIES": str(QUERIES),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
        }
    )
    runtime = Runtime(load_settings(env))
    runtime.catalog.refresh()
    scheduler = runtime.scheduler
    planner = scheduler.ahead
    assert planner is not None
    print(f"rules: {', '.join(r.id for r in runtime.catalog if r.enabled)}")
    now = parse_instant(NOW)
    base = rss_mb()
    for label, at in (("first start, empty ledger", now), ("again, as every 35 h", now)):
        if label.startswith("again"):
            # A new planner: what a restart and the pass an hour before the horizon ends do.
            planner = dataclasses.replace(planner, _planned=False)
            scheduler.ahead = planner
            at = now + timedelta(minutes=1)
        before = table_reads(dsn)
        started = time.perf_counter()
        cpu = time.process_time()
        report = scheduler.run_planned_pass(at)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        runtime.source.close()  # type: ignore[attr-defined]
        after = table_reads(dsn)
        print(
            f"full horizon pass ({label}, {planner.horizon.total_seconds() / 3600:.0f} h): "
            f"{took:.1f} s ({cpu:.1f} s CPU in the worker), peak RSS {rss_mb():.0f} MB (base "
            f"{base:.0f} MB), {planner.index.size():,} deliveries in the due-index, "
            f"{len(report.queued):,} due now and queued, {report.already_claimed:,} already "
            f"claimed; CRM read: {_reads(before, after)}"
        )
    print("| changed records | pass (s) | worker CPU (s) | re-planned | seq scans "
          "| rows read by seq scan | index scans | rows fetched by index | queued |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    # Changes are stamped after every stamp already there (a database kept with --keep holds
    # the last run's changes): a stamp behind the watermark by more than the overlap is
    # missed by design (README, "Adding the change column to a mapping").
    latest = parse_instant(
        psql(dsn, " UNION ALL ".join(f"SELECT max(updated_at) FROM {t}" for t in TABLES)
             .join(["SELECT to_char(max(m) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                    " FROM (", ") AS s(m)"]))
    )  # fmt: skip
    base = max(now, latest)
    minute = 0
    for n, count in enumerate(int(c) for c in args.changes.split(",")):
        minute += 10
        stamp = base + timedelta(minutes=minute - 1)
        if count:
            psql(dsn, change_sql(count, stamp.isoformat(), 0.1 + n / 100, args.customers))
        before = table_reads(dsn)
        started = time.perf_counter()
        cpu = time.process_time()
        report = scheduler.run_planned_pass(now + timedelta(minutes=minute))
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        runtime.source.close()  # type: ignore[attr-defined]
        after = table_reads(dsn)
        d = {k: after[k] - before[k] for k in after}
        print(
            f"| {count:,} | {took:.3f} | {cpu:.3f} | {planner.last_replanned:,} | "
            f"{d['seq_scan']} | {d['seq_rows']:,} | {d['idx_scan']:,} | {d['idx_rows']:,} | "
            f"{len(report.queued)} |"
        )
    print(f"peak RSS over all passes: {rss_mb():.0f} MB")
    print(f"load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    runtime.close()


def _reads(before: dict[str, int], after: dict[str, int]) -> str:
    d = {k: after[k] - before[k] for k in after}
    return (
        f"{d['seq_scan']} seq scans ({d['seq_rows']:,} rows), "
        f"{d['idx_scan']:,} index scans ({d['idx_rows']:,} rows)"
    )


if __name__ == "__main__":
    main()
