"""Create the demo CRM's own schema in a database and load the demo CSV data into it.

The tables are those of an imagined CRM the worker does not own (``crm_contacts``,
``crm_orders``, ``crm_tickets``, with their own column names); ``queries.yaml`` beside this file
maps them to the fields rules use. Works with PostgreSQL, MySQL/MariaDB and SQLite::

    python examples/sql/load_demo.py sqlite:///var/crm.db
    python examples/sql/load_demo.py postgresql+psycopg://postgres@127.0.0.1/crm
    python examples/sql/load_demo.py mysql+pymysql://root@127.0.0.1/crm
    python examples/sql/load_demo.py --ddl postgresql > examples/sql/schema.sql

Existing demo tables are dropped first. Like many real CRMs, the birthday is a free-text column
(``date_of_birth``) that may hold ``0000-00-00`` or ``1990-02-30``; those rows are loaded as they
are and skipped by the worker with a reason, exactly as from the CSV files.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    create_mock_engine,
    insert,
)

DEMO_CSV = Path(__file__).resolve().parent.parent / "crm"
BATCH_ROWS = 500

metadata = MetaData()

contacts = Table(
    "crm_contacts",
    metadata,
    Column("contact_id", Integer, primary_key=True, autoincrement=False),
    Column("mail", String(320), nullable=False),
    Column("given_name", String(200)),
    Column("family_name", String(200)),
    Column("date_of_birth", String(10), comment="free text in this CRM: may be 0000-00-00"),
    Column("lang", String(16)),
    Column("tz", String(64)),
    Column("owner_email", String(320)),
    Column("newsletter", Boolean, nullable=False),
    Column("tier", String(16)),
)

orders = Table(
    "crm_orders",
    metadata,
    Column("order_no", String(32), primary_key=True),
    Column("contact_id", Integer, nullable=False),
    Column("item", String(200), nullable=False),
    Column("amount", Numeric(10, 2)),
    Column("currency", String(3)),
    Column("ordered_at", DateTime, nullable=False, comment="UTC"),
    Column("shipped_at", DateTime, comment="UTC; NULL until delivered"),
    Index("crm_orders_contact", "contact_id"),
)

tickets = Table(
    "crm_tickets",
    metadata,
    Column("ticket_no", String(32), primary_key=True),
    Column("contact_id", Integer, nullable=False),
    Column("title", String(200), nullable=False),
    Column("created", DateTime, nullable=False, comment="UTC"),
    Column("closed", DateTime, comment="UTC; NULL while open"),
    Index("crm_tickets_contact", "contact_id"),
)


def _utc(text: str) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _rows(name: str, folder: Path) -> Iterator[dict[str, str]]:
    with (folder / name).open(encoding="utf-8", newline="") as stream:
        yield from csv.DictReader(stream)


def _contact(row: dict[str, str]) -> dict[str, Any]:
    return {
        "contact_id": int(row["id"]),
        "mail": row["email"],
        "given_name": row["first_name"] or None,
        "family_name": row["last_name"] or None,
        "date_of_birth": row["birthday"] or None,
        "lang": row["locale"] or None,
        "tz": row["timezone"] or None,
        "owner_email": row["account_manager_email"] or None,
        "newsletter": row["email_opt_in"].strip().lower() == "true",
        "tier": row["loyalty_tier"] or None,
    }


def _order(row: dict[str, str]) -> dict[str, Any]:
    return {
        "order_no": row["id"],
        "contact_id": int(row["customer_id"]),
        "item": row["product"],
        "amount": row["total"] or None,
        "currency": row["currency"] or None,
        "ordered_at": _utc(row["purchased_at"]),
        "shipped_at": _utc(row["delivered_at"]),
    }


def _ticket(row: dict[str, str]) -> dict[str, Any]:
    return {
        "ticket_no": row["id"],
        "contact_id": int(row["customer_id"]),
        "title": row["subject"],
        "created": _utc(row["opened_at"]),
        "closed": _utc(row["resolved_at"]),
    }


def load(url: str, folder: Path = DEMO_CSV) -> dict[str, int]:
    """(Re)create the demo tables at ``url`` and load ``folder``'s CSV files; rows per table."""
    engine = create_engine(url)
    counts: dict[str, int] = {}
    try:
        metadata.drop_all(engine)
        metadata.create_all(engine)
        with engine.begin() as conn:
            for table, name, convert in (
                (contacts, "customers.csv", _contact),
                (orders, "purchases.csv", _order),
                (tickets, "complaints.csv", _ticket),
            ):
                batch: list[dict[str, Any]] = []
                counts[table.name] = 0
                for row in _rows(name, folder):
                    batch.append(convert(row))
                    if len(batch) >= BATCH_ROWS:
                        conn.execute(insert(table), batch)
                        counts[table.name] += len(batch)
                        batch = []
                if batch:
                    conn.execute(insert(table), batch)
                    counts[table.name] += len(batch)
    finally:
        engine.dispose()
    return counts


def ddl(dialect: str) -> str:
    """The CREATE statements of the demo schema in ``dialect`` (postgresql, mysql, sqlite)."""
    statements: list[str] = []

    def collect(sql: Any, *_: Any, **__: Any) -> None:
        compiled = str(sql.compile(dialect=mock.dialect)).strip()
        statements.append("\n".join(line.rstrip() for line in compiled.splitlines()) + ";")

    mock = create_mock_engine(f"{dialect}://", collect)
    metadata.create_all(mock, checkfirst=False)
    header = (
        f"-- The demo CRM's own schema ({dialect}), generated by\n"
        f"--   python examples/sql/load_demo.py --ddl {dialect}\n"
        "-- examples/sql/queries.yaml maps it to the worker's fields.\n"
    )
    return header + "\n\n".join(statements) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="SQLAlchemy URL of the database to load")
    parser.add_argument("--csv", type=Path, default=DEMO_CSV, help="folder of demo CSV files")
    parser.add_argument("--ddl", metavar="DIALECT", help="print the CREATE statements instead")
    args = parser.parse_args()
    if args.ddl:
        print(ddl(args.ddl), end="")
        return
    if not args.url:
        parser.error("give the database URL, e.g. sqlite:///var/crm.db")
    for table, count in load(args.url, args.csv).items():
        print(f"{table}: {count} rows")


if __name__ == "__main__":
    main()
