"""A synthetic CRM for the benchmarks: CSV exports, optionally loaded into PostgreSQL.

    .venv/bin/python bench/synthetic_crm.py --out var/bench-crm              # 1M/1M/100k
    .venv/bin/python bench/synthetic_crm.py --out var/bench-crm --customers 10000 \\
        --purchases 10000 --complaints 1000
    .venv/bin/python bench/synthetic_crm.py --out var/bench-crm --postgres \\
        postgresql://postgres@127.0.0.1:5432/crm_bench

Deterministic (fixed seed). Distributions meant to look like a real shop, not like a worst case:
birthdays uniform over 1940-2007 (Feb 29 included in leap years), customers spread over many
time zones (weighted towards Europe and the Americas, a few at UTC+14/-11, some without a zone),
locales en/de/es with regional variants, 85 % opted in, purchases over the three years before
the reference day (90 % delivered 1-10 days later), complaints over the last 120 days (70 %
resolved). Columns are those of ``examples/crm`` (extra columns reach templates as fields).

:func:`write_due_crm` writes the delivery benchmark's CRM instead: N customers whose birthday
is one chosen day, in European zones, all opted in, so one pass at noon UTC finds all N due.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

SEED = 7
#: The day the data is "exported"; purchases and complaints lie before it.
REFERENCE_DAY = date(2026, 11, 25)
CHUNK_ROWS = 50_000

CUSTOMER_COLUMNS = [
    "id",
    "email",
    "first_name",
    "last_name",
    "birthday",
    "locale",
    "timezone",
    "account_manager_email",
    "email_opt_in",
    "loyalty_tier",
]
PURCHASE_COLUMNS = [
    "id",
    "customer_id",
    "product",
    "total",
    "currency",
    "purchased_at",
    "delivered_at",
]
COMPLAINT_COLUMNS = ["id", "customer_id", "subject", "opened_at", "resolved_at"]

#: (zone, weight): where customers live; "" = no zone in the CRM (the default zone applies).
ZONES = [
    ("Europe/Berlin", 22),
    ("Europe/Madrid", 12),
    ("Europe/Vienna", 5),
    ("Europe/London", 10),
    ("Europe/Zurich", 3),
    ("America/New_York", 10),
    ("America/Chicago", 4),
    ("America/Los_Angeles", 6),
    ("America/Mexico_City", 7),
    ("America/Bogota", 3),
    ("Asia/Tokyo", 3),
    ("Australia/Sydney", 4),
    ("Pacific/Auckland", 2),
    ("Pacific/Kiritimati", 1),
    ("Pacific/Pago_Pago", 1),
    ("UTC", 2),
    ("", 5),
]
LOCALES = [("en", 25), ("en-GB", 6), ("en-US", 6), ("de", 25), ("de-AT", 5), ("de-CH", 3)]
LOCALES += [("es", 22), ("es-MX", 8)]
FIRST = ["Olivia", "James", "Jürgen", "Anna", "Lukas", "María", "José", "Sofía", "Noah", "Lena"]
LAST = ["Smith", "Müller", "García", "Jones", "Schneider", "Fernández", "Weber", "López"]
TIERS = ["bronze", "bronze", "bronze", "silver", "silver", "gold"]
MANAGERS = [f"manager{n}@example.com" for n in range(20)]
PRODUCTS = ["Espresso machine", "Road bike", "Standing desk", "Headphones", "Hiking boots"]
SUBJECTS = ["Wrong size", "Invoice error", "Late delivery", "Damaged parcel", "Missing part"]
DUE_ZONES = ["Europe/Berlin", "Europe/Madrid", "Europe/London", "Europe/Vienna", "UTC"]

_BIRTH_FIRST = date(1940, 1, 1).toordinal()
_BIRTH_LAST = date(2007, 12, 31).toordinal()


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, int]], n: int) -> list[str]:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs], k=n)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def customer_rows(n: int, rng: random.Random) -> Iterator[list[str]]:
    for start in range(0, n, CHUNK_ROWS):
        size = min(CHUNK_ROWS, n - start)
        zones = _weighted(rng, ZONES, size)
        locales = _weighted(rng, LOCALES, size)
        for i in range(size):
            cid = start + i + 1
            first, last = rng.choice(FIRST), rng.choice(LAST)
            born = date.fromordinal(rng.randint(_BIRTH_FIRST, _BIRTH_LAST))
            yield [
                str(cid),
                f"customer{cid}@example.com",
                first,
                last,
                born.isoformat(),
                locales[i],
                zones[i],
                rng.choice(MANAGERS),
                "true" if rng.random() < 0.85 else "false",
                rng.choice(TIERS),
            ]


def purchase_rows(n: int, customers: int, rng: random.Random) -> Iterator[list[str]]:
    end = datetime.combine(REFERENCE_DAY, datetime.min.time())
    span_s = 3 * 365 * 86400
    for pid in range(1, n + 1):
        bought = end - timedelta(seconds=rng.randrange(span_s))
        delivered = bought + timedelta(days=rng.randint(1, 10), hours=rng.randint(0, 12))
        yield [
            f"P{pid}",
            str(rng.randint(1, max(customers, 1))),
            rng.choice(PRODUCTS),
            f"{rng.uniform(5, 900):.2f}",
            "EUR",
            _iso(bought),
            _iso(delivered) if rng.random() < 0.9 and delivered < end else "",
        ]


def complaint_rows(n: int, customers: int, rng: random.Random) -> Iterator[list[str]]:
    end = datetime.combine(REFERENCE_DAY, datetime.min.time())
    for cid in range(1, n + 1):
        opened = end - timedelta(seconds=rng.randrange(120 * 86400))
        resolved = opened + timedelta(days=rng.randint(0, 20), hours=rng.randint(1, 23))
        yield [
            f"C{cid}",
            str(rng.randint(1, max(customers, 1))),
            rng.choice(SUBJECTS),
            _iso(opened),
            _iso(resolved) if rng.random() < 0.7 and resolved < end else "",
        ]


def _write(path: Path, header: list[str], rows: Iterator[list[str]]) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        batch: list[list[str]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK_ROWS:
                writer.writerows(batch)
                count += len(batch)
                batch = []
        writer.writerows(batch)
        count += len(batch)
    return count


def write_crm(folder: Path, *, customers: int, purchases: int, complaints: int) -> None:
    """customers.csv, purchases.csv, complaints.csv in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    _write(folder / "customers.csv", CUSTOMER_COLUMNS, customer_rows(customers, rng))
    _write(folder / "purchases.csv", PURCHASE_COLUMNS, purchase_rows(purchases, customers, rng))
    _write(folder / "complaints.csv", COMPLAINT_COLUMNS, complaint_rows(complaints, customers, rng))


def write_due_crm(folder: Path, n: int, birthday: date) -> None:
    """N customers born on ``birthday``'s month and day (years 1950-2000), in zones between
    UTC and UTC+2, all opted in; no purchases or complaints, so only birthday rules fire."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    def rows() -> Iterator[list[str]]:
        for cid in range(1, n + 1):
            year = rng.randint(1950, 2000)
            day = birthday.day if (birthday.month, birthday.day) != (2, 29) else 28
            yield [
                str(cid),
                f"customer{cid}@example.com",
                rng.choice(FIRST),
                rng.choice(LAST),
                date(year, birthday.month, day).isoformat(),
                _weighted(rng, LOCALES, 1)[0],
                rng.choice(DUE_ZONES),
                rng.choice(MANAGERS),
                "true",
                rng.choice(TIERS),
            ]

    _write(folder / "customers.csv", CUSTOMER_COLUMNS, rows())
    _write(folder / "purchases.csv", PURCHASE_COLUMNS, iter([]))
    _write(folder / "complaints.csv", COMPLAINT_COLUMNS, iter([]))


#: PostgreSQL tables mirroring the CSV files, typed. The SQL source's own queries map them.
#: The CSV files as tables in a CRM's own naming, columns in the files' order (COPY maps by
#: position), mapped back to our field names by ``bench/queries.yaml``.
POSTGRES_TABLES = {
    "customers": (
        "bench_contacts",
        "contact_id bigint PRIMARY KEY, mail text, given_name text, family_name text,"
        " date_of_birth date, lang text, tz text, owner_email text, newsletter boolean,"
        " tier text",
    ),
    "purchases": (
        "bench_orders",
        "order_no text PRIMARY KEY, contact_id bigint, item text, amount numeric(10, 2),"
        " currency text, ordered_at timestamptz, shipped_at timestamptz",
    ),
    "complaints": (
        "bench_tickets",
        "ticket_no text PRIMARY KEY, contact_id bigint, title text, created timestamptz,"
        " closed timestamptz",
    ),
}
#: The mapping file for these tables (``CRM_SOURCE_QUERIES``).
POSTGRES_QUERIES = Path(__file__).resolve().parent / "queries.yaml"


def load_postgres(folder: Path, dsn: str) -> None:
    """(Re)create the three tables of ``POSTGRES_TABLES`` in ``dsn`` (the database is created
    when missing) and fill them with COPY (through ``psql``, so the benchmarks need no database
    driver); indexes on ``contact_id`` for per-customer lookups."""
    psql = shutil.which("psql")
    if psql is None:
        raise SystemExit("psql not found: install the PostgreSQL client to load the CRM")
    server, _, database = dsn.rpartition("/")
    exists = subprocess.run(
        [
            psql,
            f"{server}/postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{database}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(
            [psql, f"{server}/postgres", "-qc", f'CREATE DATABASE "{database}"'], check=True
        )
    script = []
    for csv_name, (table, columns) in POSTGRES_TABLES.items():
        path = (folder / f"{csv_name}.csv").resolve()
        script += [
            f"DROP TABLE IF EXISTS {table};",
            f"CREATE TABLE {table} ({columns});",
            f"\\copy {table} FROM '{path}' WITH (FORMAT csv, HEADER true)",
        ]
    script += [
        "CREATE INDEX ON bench_orders (contact_id);",
        "CREATE INDEX ON bench_tickets (contact_id);",
        "ANALYZE;",
    ]
    subprocess.run(
        [psql, dsn, "-v", "ON_ERROR_STOP=1", "-q"],
        input="\n".join(script),
        text=True,
        check=True,
        env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV files")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--complaints", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="DSN", help="also load the CSVs into this database")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    write_crm(
        args.out, customers=args.customers, purchases=args.purchases, complaints=args.complaints
    )
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.postgres:
        started = time.perf_counter()
        load_postgres(args.out, args.postgres)
        print(f"loaded into PostgreSQL in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
