"""Generate the demo CRM in ``examples/crm/`` (deterministic: the same files every run).

    python examples/generate_demo.py [--customers 1500] [--out examples/crm]

Customers in en, de and es locales across far-apart time zones, with purchases and complaints,
so every sample rule has work on most days. A few rows are deliberately dirty (bad address,
impossible date, unknown time zone, Feb 29 birthdays) to show that they are skipped with a
reason instead of breaking a pass.
"""

from __future__ import annotations

import argparse
import csv
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SEED = 20261124
TODAY = date(2026, 11, 24)

PEOPLE = {
    "en": (
        ["Olivia", "James", "Amelia", "Oliver", "Isla", "Jack", "Ava", "Noah", "Emily", "Leo", ""],
        ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Davies", "O'Brien"],
        [
            "America/New_York",
            "America/Los_Angeles",
            "Europe/London",
            "Australia/Sydney",
            "Pacific/Auckland",
            "America/Chicago",
        ],
    ),
    "de": (
        ["Jürgen", "Anna", "Lukas", "Sophie", "Maximilian", "Marie", "Jörg", "Lena", "Paul", ""],
        ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Groß", "Bäcker"],
        ["Europe/Berlin", "Europe/Vienna", "Europe/Zurich"],
    ),
    "es": (
        ["José", "María", "Lucía", "Hugo", "Martina", "Álvaro", "Sofía", "Iñaki", "Paula", ""],
        ["García", "Peña Muñoz", "Fernández", "López", "Martínez", "Sánchez", "Núñez"],
        ["Europe/Madrid", "America/Mexico_City", "America/Bogota", "Atlantic/Canary"],
    ),
}
LOCALE_VARIANTS = {
    "en": ["en", "en-GB", "en-US"],
    "de": ["de", "de-AT", "de-CH"],
    "es": ["es", "es-MX"],
}
PRODUCTS = [
    "Espresso machine",
    "Road bike",
    "Standing desk",
    "Noise-cancelling headphones",
    "Cast-iron pan",
    "Hiking boots",
    "Smart watch",
    "Reading lamp",
    "Yoga mat",
    "Backpack",
]
COMPLAINT_SUBJECTS = [
    "Late delivery",
    "Damaged parcel",
    "Wrong size",
    "Invoice error",
    "Missing part",
    "Refund not received",
]
MANAGERS = ["anna.berger@example.com", "tom.reed@example.com", "lucia.vidal@example.com"]


def _ascii(text: str) -> str:
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss"))
    return "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in ".-"))


def customers(rng: random.Random, count: int) -> list[dict[str, str]]:
    rows = []
    for n in range(1, count + 1):
        language = rng.choices(["en", "de", "es"], weights=[5, 3, 2])[0]
        firsts, lasts, zones = PEOPLE[language]
        first, last = rng.choice(firsts), rng.choice(lasts)
        born = date(rng.randint(1950, 2006), 1, 1) + timedelta(days=rng.randint(0, 364))
        handle = _ascii(f"{first or 'kunde'}.{last}".replace(" ", "")) + str(n)
        rows.append(
            {
                "id": str(n),
                "email": f"{handle}@example.{rng.choice(['com', 'org', 'net'])}",
                "first_name": first,
                "last_name": last,
                "birthday": born.isoformat(),
                "locale": rng.choice(LOCALE_VARIANTS[language]),
                "timezone": rng.choice(zones),
                "account_manager_email": rng.choice(MANAGERS),
                "email_opt_in": rng.choices(["true", "false"], weights=[4, 1])[0],
                "loyalty_tier": rng.choice(["bronze", "silver", "gold"]),
            }
        )
    # Deliberately dirty rows: each is skipped with a reason, nobody else is affected.
    rows[0].update(first_name="Ada", birthday="1988-02-29", timezone="Europe/Berlin", locale="de")
    rows[1].update(birthday="1992-02-29", timezone="Pacific/Auckland", locale="en")
    rows[2].update(birthday="0000-00-00")
    rows[3].update(birthday="1990-02-30")
    rows[4].update(timezone="Mars/Olympus_Mons")
    rows[5].update(email="not-an-address")
    rows[6].update(email="victim@example.com\r\nBcc: everyone@example.net")
    rows[7].update(first_name="<script>alert(1)</script>", last_name="Smith, John")
    rows[8].update(birthday=(TODAY + timedelta(days=30)).isoformat())
    return rows


def purchases(rng: random.Random, customer_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    for n in range(1, 2 * len(customer_rows) + 1):
        customer = rng.choice(customer_rows)
        bought = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(
            days=rng.randint(0, (TODAY - date(2024, 1, 1)).days), minutes=rng.randint(0, 1439)
        )
        delivered = bought + timedelta(days=rng.randint(1, 6), hours=rng.randint(0, 12))
        rows.append(
            {
                "id": f"P{n}",
                "customer_id": customer["id"],
                "product": rng.choice(PRODUCTS),
                "total": f"{rng.uniform(9, 900):.2f}",
                "currency": "EUR",
                "purchased_at": bought.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "delivered_at": delivered.strftime("%Y-%m-%dT%H:%M:%SZ")
                if rng.random() > 0.05
                else "",
            }
        )
    rows[0].update(purchased_at="2024-02-29T10:00:00Z", delivered_at="2024-03-02T12:00:00Z")
    rows[1].update(purchased_at="2025-01-31T18:30:00Z", delivered_at="2025-02-03T09:00:00Z")
    return rows


def complaints(rng: random.Random, customer_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    # Spread over the same years as the purchases, so that on most days some complaint is
    # 2, 5 or 8 days old and still open (the complaint-follow-up rule has work).
    for n in range(1, len(customer_rows) // 2 + 1):
        customer = rng.choice(customer_rows)
        opened = datetime.combine(TODAY, datetime.min.time(), UTC) - timedelta(
            days=rng.randint(0, (TODAY - date(2024, 1, 1)).days), minutes=rng.randint(0, 1439)
        )
        resolved = ""
        if rng.random() < 0.5:
            resolved = (opened + timedelta(days=rng.randint(0, 10), hours=3)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        rows.append(
            {
                "id": f"C{n}",
                "customer_id": customer["id"],
                "subject": rng.choice(COMPLAINT_SUBJECTS),
                "opened_at": opened.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "resolved_at": resolved,
            }
        )
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "crm")
    args = parser.parse_args()
    rng = random.Random(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    customer_rows = customers(rng, args.customers)
    write(args.out / "customers.csv", customer_rows)
    write(args.out / "purchases.csv", purchases(rng, customer_rows))
    write(args.out / "complaints.csv", complaints(rng, customer_rows))
    print(f"wrote {args.customers} customers and their purchases and complaints to {args.out}")


if __name__ == "__main__":
    main()
