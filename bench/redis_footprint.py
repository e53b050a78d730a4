"""Redis footprint: bytes per delivery in the ledger (and delivery log), and the steady state
for a year of the sample rules on 1M customers.

    .venv/bin/python bench/redis_footprint.py
    .venv/bin/python bench/redis_footprint.py -n 500 --sample 5000     # quicker

1. A real pass: a private ``redis-server`` and SMTP sink (as in ``bench/delivery.py``), N due
   customers, ``Runtime.run_once`` (scheduler, workers, re-check, render, send, ledger). Then
   ``MEMORY USAGE`` of every ledger hash, and of every other key the worker left behind that
   is not Dramatiq's (a delivery log stream, when this version has one).
2. A year of the rules in ``rules/``: every rule's window widened to 365 days over a synthetic
   CRM of ``--sample`` customers (purchases alike, complaints a tenth), deliveries counted per
   rule and scaled to 1M customers.
3. The steady state under the lifetimes and caps of ``worker/constants.py``: ledger entries
   live ``LEDGER_TTL``, so Redis holds yearly deliveries × TTL / 365 days of them; constants
   that bound a log (``*LOG*`` with a length or lifetime) are printed and applied.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import delivery  # noqa: E402
from synthetic_crm import REFERENCE_DAY, write_crm, write_due_crm  # noqa: E402

MIB = 1024 * 1024
FULL_SIZE = 1_000_000


def measure_pass(n: int, tmp: Path) -> tuple[list[int], dict[str, tuple[str, int, int]]]:
    """Ledger hash sizes, and {key: (type, entries, bytes)} of other worker keys."""
    from worker.constants import DRAMATIQ_NAMESPACE, LEDGER_KEY_PREFIX

    port = delivery.free_port()
    sink, _ = delivery.start_sink(port, tmp)
    redis_proc, url = delivery.start_redis(tmp)
    try:
        write_due_crm(tmp / "crm", n, delivery.DAY)
        runtime = delivery.runtime_for(delivery.product_env(tmp / "crm", url, port, 8))
        try:
            summary = runtime.run_once(delivery.NOW)
            print(f"pass: {len(summary.report.queued):,} queued; ledger {dict(summary.states)}")
            client = runtime.redis
            ledger = [
                int(client.memory_usage(key, samples=0) or 0)
                for key in client.scan_iter(match=f"{LEDGER_KEY_PREFIX}*", count=1000)
            ]
            others: dict[str, tuple[str, int, int]] = {}
            for raw in client.scan_iter(count=1000):
                key = raw.decode()
                if key.startswith((LEDGER_KEY_PREFIX, DRAMATIQ_NAMESPACE)):
                    continue
                kind = client.type(key).decode()
                entries = {
                    "stream": client.xlen,
                    "list": client.llen,
                    "zset": client.zcard,
                    "hash": client.hlen,
                    "set": client.scard,
                }.get(kind, lambda _: 1)(key)
                others[key] = (kind, int(entries), int(client.memory_usage(key, samples=0) or 0))
        finally:
            runtime.close()
    finally:
        delivery.stop_all([sink, redis_proc])
    return ledger, others


def yearly_deliveries(sample: int, tmp: Path) -> Counter[str]:
    """Deliveries per rule in one year over a CRM of ``sample`` customers."""
    from worker.planning.plan import PlannedDelivery, plan
    from worker.runtime import Runtime
    from worker.settings import load_settings

    crm = tmp / "year-crm"
    write_crm(crm, customers=sample, purchases=sample, complaints=sample // 10)
    env = {
        "CRM_SOURCE": str(crm),
        "CRM_RULES_DIR": str(REPO / "rules"),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
    }
    runtime = Runtime(load_settings(env))
    runtime.catalog.refresh()
    year = timedelta(days=365)
    rules = [rule.model_copy(update={"grace": year}) for rule in runtime.catalog if rule.enabled]
    now = datetime.combine(REFERENCE_DAY, datetime.min.time(), UTC)
    counts: Counter[str] = Counter({rule.id: 0 for rule in rules})
    for item in plan(
        rules,  # type: ignore[arg-type]  # plan only iterates the catalog
        runtime.source,
        now,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    ):
        if isinstance(item, PlannedDelivery):
            counts[item.rule_id] += 1
    return counts


def log_bounds() -> dict[str, object]:
    """Constants that bound a delivery log: named *LOG* and either a length cap (*MAXLEN) or a
    lifetime (a timedelta); other *LOG* limits (characters per field) bound no entry count."""
    from worker import constants

    return {
        name: value
        for name, value in vars(constants).items()
        if name.isupper()
        and "LOG" in name
        and (isinstance(value, timedelta) or (isinstance(value, int) and "MAXLEN" in name))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=2000, help="deliveries in the pass")
    parser.add_argument("--sample", type=int, default=20_000, help="customers for the year count")
    args = parser.parse_args()
    from worker.constants import LEDGER_TTL

    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    try:
        ledger, others = measure_pass(args.messages, tmp)
        per_delivery = statistics.mean(ledger)
        print(
            f"ledger: {len(ledger):,} hashes, MEMORY USAGE mean {per_delivery:.0f} B "
            f"(min {min(ledger)}, max {max(ledger)}) per delivery"
        )
        log_per_entry = None
        logs = {k: v for k, v in others.items() if v[0] in ("stream", "list", "zset")}
        for key, (kind, entries, size) in sorted(others.items()):
            print(f"other key {key}: {kind}, {entries:,} entries, {size:,} B")
        if logs:
            entries = sum(v[1] for v in logs.values())
            log_per_entry = sum(v[2] for v in logs.values()) / max(entries, 1)
            print(f"delivery log: {log_per_entry:.0f} B per entry ({', '.join(logs)})")
        else:
            print("delivery log: none in this version (no stream/list left by a pass): skipped")

        counts = yearly_deliveries(args.sample, tmp)
        scale = FULL_SIZE / args.sample
        yearly = sum(counts.values()) * scale
        print(f"\na year of the rules on {args.sample:,} customers, scaled ×{scale:g} to 1M:")
        for rule_id, count in sorted(counts.items()):
            print(f"  {rule_id:<28} {count:>9,} → {count * scale:>12,.0f} deliveries/year")
        ttl_days = LEDGER_TTL / timedelta(days=1)
        held = yearly * min(ttl_days, 365 * 10) / 365
        print(
            f"ledger steady state: {yearly:,.0f}/year × LEDGER_TTL {ttl_days:g} d / 365 d "
            f"= {held:,.0f} entries × {per_delivery:.0f} B = {held * per_delivery / MIB:,.0f} MiB"
        )
        bounds = log_bounds()
        if log_per_entry is not None:
            caps = [v for k, v in bounds.items() if isinstance(v, int)]
            lifetimes = [v for k, v in bounds.items() if isinstance(v, timedelta)]
            entries_held = yearly * (min(lifetimes) / timedelta(days=365) if lifetimes else 1)
            if caps:
                entries_held = min(entries_held, min(caps))
            print(
                f"delivery log steady state (bounds {bounds or 'none found'}): "
                f"{entries_held:,.0f} entries × {log_per_entry:.0f} B = "
                f"{entries_held * log_per_entry / MIB:,.0f} MiB"
            )
        print(f"measured {datetime.now().astimezone().isoformat(timespec='seconds')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
