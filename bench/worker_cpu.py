"""CPU per message of the worker's own code path, in one process, without Dramatiq.

    .venv/bin/python bench/worker_cpu.py                 # 10,000 messages
    .venv/bin/python bench/worker_cpu.py -n 5000 --profile
    .venv/bin/python bench/worker_cpu.py --postgres postgresql://postgres@127.0.0.1:5432

A real scheduler pass queues N due birthday messages (the CRM of ``bench/delivery.py``), then
this process calls ``worker.delivery.batch.deliver_batch`` on the keys, DELIVERY_BATCH_SIZE at a
time, as a worker thread does: lease, re-check against the CSV, render, MIME, send over
``--connections`` kept-open connections to the sink, outcome into the ledger and the log.
Prints messages/s and the CPU (user + system) this process spent per message; Redis and the
sink run in their own processes and are not counted. ``--profile`` adds cProfile's top
functions (which inflates the CPU figure; use py-spy for shares, see bench/README.md).
``--postgres SERVER`` loads the same CRM into the database ``crm_bench_due_<N>`` on that server
and re-checks through the SQL source (``bench/queries.yaml``), as a deployment on the CRM's
database does; the database's own CPU is not counted either, the wall-clock rate shows it.

Used to compare one change to the worker's code with the one before it: run each a few times
in alternating order; the machine's noise is about ±10 %.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery import (
    DAY,
    NOW,
    free_port,
    product_env,
    runtime_for,
    start_redis,
    start_sink,
    use_postgres,
)
from synthetic_crm import write_due_crm


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections")
    parser.add_argument("--aiosmtpd", action="store_true", help="use aiosmtpd, not smtp-sink")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 40")
    parser.add_argument("--postgres", metavar="SERVER", help="re-check through PostgreSQL")
    args = parser.parse_args()

    from worker.constants import DELIVERY_BATCH_SIZE
    from worker.delivery.batch import deliver_batch
    from worker.localtime import utc_now

    with tempfile.TemporaryDirectory(prefix="worker-cpu-") as tmp:
        folder = Path(tmp)
        write_due_crm(folder / "crm", args.messages, DAY)
        smtp_port = free_port()
        sink, sink_name = start_sink(smtp_port, folder, aiosmtpd=args.aiosmtpd)
        redis_proc, redis_url = start_redis(folder)
        try:
            env = product_env(folder / "crm", redis_url, smtp_port, 1, args.connections)
            if args.postgres:
                use_postgres(env, folder / "crm", args.postgres, args.messages)
            runtime = runtime_for(env)
            runtime.actor  # noqa: B018 - declares the queue the pass sends to
            keys = runtime.scheduler.run_pass(NOW).queued
            deliverer = runtime.deliverer
            profile = cProfile.Profile() if args.profile else None
            enqueued_at = utc_now()
            if profile:
                profile.enable()
            started, cpu_before = time.perf_counter(), cpu_seconds()
            for start in range(0, len(keys), DELIVERY_BATCH_SIZE):
                batch = keys[start : start + DELIVERY_BATCH_SIZE]
                deliver_batch(deliverer, batch, as_of=NOW, enqueued_at=enqueued_at)
            elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
            if profile:
                profile.disable()
            states = runtime.ledger.states(keys)
            runtime.close()
        finally:
            sink.terminate()
            redis_proc.terminate()
    sent = sum(1 for state in states.values() if state == "sent")
    source = "PostgreSQL" if args.postgres else "CSV"
    print(
        f"sink: {sink_name}; {args.connections} SMTP connections; source: {source}; "
        f"{sent:,} of {len(keys):,} sent"
    )
    print(
        f"{len(keys) / elapsed:,.0f} msg/s in one thread; "
        f"CPU {1000 * cpu / max(len(keys), 1):.3f} ms per message (this process)"
    )
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
