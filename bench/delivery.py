"""Delivery throughput: the SMTP limit, the product, and the naive design, side by side.

    .venv/bin/python bench/delivery.py                      # 10,000 messages each
    .venv/bin/python bench/delivery.py -n 500               # quick check
    .venv/bin/python bench/delivery.py --processes 2 --threads 8
    .venv/bin/python bench/delivery.py --postgres postgresql://postgres@127.0.0.1:5432

All three send to the same local SMTP sink: Postfix's ``smtp-sink`` (Debian package
``postfix``) when installed, else an aiosmtpd sink in a subprocess (said so in the output).
Redis is a private ``redis-server`` on a free port (AOF, ``appendfsync everysec``, as the
README asks of production) unless ``--redis-url`` names one (its database is flushed).

(a) limit: the product's own messages, rendered beforehand, sent by a bare aiosmtplib loop
    over 4 kept-open connections from one process;
(b) product: a synthetic CSV CRM in which N customers have their birthday today, the real
    ``rules/`` and ``templates/``; one scheduler pass (plan, claim, queue in batches), then
    ``crm-worker worker`` subprocesses (re-check, render, send, ledger); the clock runs from
    the start of the pass until every key the pass queued is final in the ledger;
(o) run --once: ``crm-worker run --once`` as README gives it (its default worker processes,
    threads and connections), timed from the command's start to its exit;
(c) naive: one Dramatiq message per customer (its row as the payload), an actor that renders
    the same templates and sends with ``smtplib`` over a new connection per message, with
    the same worker processes and threads as (b).

``--postgres SERVER`` loads the same CRM into the database ``crm_bench_due_<N>`` on that server
and points (b) and (c) at it through the SQL source (``bench/queries.yaml``), as a deployment
beside the CRM's database reads it (the database's own CPU is not in the CPU shares: its
backends start with the workers' connections). (c) reads the database once, to enqueue: its
messages carry the row, so its workers do not query it.

Targets (issue 7): b/a ≥ 0.5 and b/c ≥ 3; (issue 19): o/a ≥ 0.5 and o/c ≥ 4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_crm import load_postgres, write_due_crm  # noqa: E402

DAY = date(2026, 6, 15)
#: Noon UTC: every synthetic customer (UTC … UTC+2, greeted at 09:00 local) is due.
NOW = datetime.fromisoformat("2026-06-15T12:00:00+00:00")
LIMIT_CONNECTIONS = 4
NAIVE_NAMESPACE = "bench-naive"
NAIVE_DONE_KEY = "bench-naive:done"
NAIVE_QUEUE = "bench-naive"
SECRET = "bench-unsubscribe-secret"
#: How the SQL source reads the synthetic CRM's tables (see bench/README.md).
QUERIES = Path(__file__).resolve().parent / "queries.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


# ---------------------------------------------------------------- services


def start_sink(
    port: int, logs: Path, *, aiosmtpd: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Postfix's smtp-sink if installed (and not ``aiosmtpd``), else aiosmtpd in a subprocess."""
    binary = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    if aiosmtpd:
        binary = None
    if binary:
        args = [binary, "-m", "1000", f"127.0.0.1:{port}", "1000"]
        if os.geteuid() == 0:
            args[1:1] = ["-u", "nobody"]
        name = "Postfix smtp-sink"
    else:
        args = [sys.executable, __file__, "--aiosmtpd-sink", str(port)]
        name = "aiosmtpd in a subprocess" + (
            "" if aiosmtpd else " (smtp-sink not found: apt-get install postfix for a faster sink)"
        )
    proc = subprocess.Popen(args, stdout=(logs / "sink.log").open("wb"), stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, name


def aiosmtpd_sink(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
            return "250 2.0.0 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def start_redis(logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; pass --redis-url")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(logs)]
    args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    proc = subprocess.Popen(args, stdout=(logs / "redis.log").open("wb"), stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def product_env(
    crm: Path, redis_url: str, smtp_port: int, threads: int, connections: int = 1
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_REDIS_URL": redis_url,
            "CRM_SOURCE": str(crm),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_SMTP_HOST": "127.0.0.1",
            "CRM_SMTP_PORT": str(smtp_port),
            "CRM_SMTP_SECURITY": "none",
            "CRM_UNSUBSCRIBE_SECRET": SECRET,
            "CRM_WORKER_THREADS": str(threads),
            "CRM_SMTP_CONNECTIONS": str(connections),
            "CRM_QUEUE_NAME": "bench",
        }
    )
    return env


def use_postgres(env: dict[str, str], crm: Path, server: str, n: int) -> None:
    """Load the CSV CRM ``crm`` into ``crm_bench_due_<n>`` on ``server`` and point ``env``'s
    source at it."""
    dsn = f"{server.rstrip('/')}/crm_bench_due_{n}"
    load_postgres(crm, dsn)
    rest = dsn.partition("://")[2]  # postgres:// or postgresql://, as psql takes them
    env["CRM_SOURCE"] = f"postgresql+psycopg://{rest}"
    env["CRM_SOURCE_QUERIES"] = str(QUERIES)


def runtime_for(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from worker.runtime import Runtime
    from worker.settings import load_settings

    return Runtime(load_settings(env))


def start_workers(args: list[str], env: dict[str, str], n: int, logs: Path, name: str) -> list:
    procs = []
    for i in range(n):
        log = (logs / f"{name}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        )
    return procs


def wait_consumers(client, namespace: str, n: int, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Dramatiq's Redis broker registers a heartbeat per worker process once it consumes."""
    key = f"{namespace}:__heartbeats__"
    deadline = time.monotonic() + timeout_s
    while client.zcard(key) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"workers did not start within {timeout_s} s (see logs)")
        time.sleep(0.1)
    time.sleep(0.5)  # the last one's threads


def stop_all(procs: list) -> None:  # type: ignore[type-arg]
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class CpuMeter:
    """CPU seconds (user + system) spent by named processes between start() and stop()."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        import psutil

        self.procs = {name: [psutil.Process(pid) for pid in group] for name, group in pids.items()}
        self.started: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {
            name: sum(sum(p.cpu_times()[:2]) for p in group) for name, group in self.procs.items()
        }

    def start(self) -> None:
        self.started = self._now()

    def stop(self) -> dict[str, float]:
        return {name: cpu - self.started[name] for name, cpu in self._now().items()}


def print_cpu(cpu: dict[str, float], messages: int, elapsed: float) -> None:
    sent = max(messages, 1)
    shares = ", ".join(f"{name} {1000 * s / sent:.2f}" for name, s in cpu.items())
    print(
        f"    CPU ms per message: {shares}; total {1000 * sum(cpu.values()) / sent:.2f} "
        f"(wall {1000 * elapsed / sent:.2f} ms × {os.cpu_count()} cores available)"
    )


# ---------------------------------------------------------------- (a) the limit


def prerender(env: dict[str, str]) -> list[tuple[str, str, bytes]]:
    """(sender, recipient, bytes) of every due message, exactly as the product would send."""
    from worker.planning.plan import PlannedDelivery, plan

    runtime = runtime_for(env)
    items = plan(
        runtime.catalog,
        runtime.source,
        NOW,
        default_zone=runtime.default_zone,
        company=runtime.settings.company,
    )
    out = []
    for item in items:
        if isinstance(item, PlannedDelivery):
            _, outgoing = runtime.deliverer.build(item, NOW)
            out.append((outgoing.sender, outgoing.recipient, outgoing.data))
    return out


async def _send_all(port: int, messages: list[tuple[str, str, bytes]]) -> None:
    import aiosmtplib

    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        try:
            while not queue.empty():
                sender, recipient, data = queue.get_nowait()
                await client.sendmail(sender, [recipient], data)
        finally:
            await client.quit()

    await asyncio.gather(*(connection() for _ in range(LIMIT_CONNECTIONS)))


def run_limit(port: int, messages: list[tuple[str, str, bytes]]) -> float:
    started = time.perf_counter()
    asyncio.run(_send_all(port, messages))
    return len(messages) / (time.perf_counter() - started)


# ---------------------------------------------------------------- (b) the product


def run_product(
    env: dict[str, str], processes: int, threads: int, logs: Path, services: dict[str, int]
) -> tuple[float, Counter[str], int]:
    runtime = runtime_for(env)
    runtime.redis.flushdb()
    from worker.constants import DRAMATIQ_NAMESPACE

    runtime.actor  # noqa: B018 - declares the queue
    crm_worker = str(Path(sys.executable).with_name("crm-worker"))
    # One supervisor (`crm-worker worker`) starting the worker processes, as deployed.
    workers = start_workers(
        [crm_worker, "worker", "--processes", str(processes), "--threads", str(threads)],
        env,
        1,
        logs,
        "product",
    )
    try:
        wait_consumers(runtime.redis, DRAMATIQ_NAMESPACE, processes)
        import psutil

        children = [c.pid for w in workers for c in psutil.Process(w.pid).children()]
        meter = CpuMeter(
            {
                "workers": children + [w.pid for w in workers],
                "scheduler pass (this process)": [os.getpid()],
                **{name: [pid] for name, pid in services.items()},
            }
        )
        meter.start()
        started = time.perf_counter()
        report = runtime.scheduler.run_pass(NOW)
        pass_s = time.perf_counter() - started
        states = runtime.wait_for(report.queued, timeout_s=1800, poll_s=0.02)
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        stop_all(workers)
        runtime.close()
    counts = Counter(states.values())
    print(f"    pass (plan + claim + queue) took {pass_s:.2f} s of the {elapsed:.2f} s")
    print_cpu(cpu, counts["sent"], elapsed)
    return counts["sent"] / elapsed, counts, len(report.queued)


# ---------------------------------------------------------------- (o) run --once as README gives it


@contextlib.contextmanager
def details() -> Iterator[io.StringIO]:
    """What a part prints while it runs, held back so that it follows the part's headline."""
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        yield lines


def run_once_command(
    env: dict[str, str], processes: int | None, connections: int | None = None
) -> tuple[float, int, str, float | None]:
    """``crm-worker run --once`` with the product's defaults (worker processes = usable CPUs,
    threads and SMTP connections as shipped), timed from the command's start to its exit:
    interpreter start, imports, worker processes starting, the pass, delivery, the drain.
    Also returns the span the command logs itself: from the start of its pass until every key
    it queued is final (what (b) measures), or None if it did not log it."""
    runtime = runtime_for(env)
    runtime.redis.flushdb()
    runtime.close()
    defaults = {
        k: v for k, v in env.items() if k not in {"CRM_WORKER_THREADS", "CRM_SMTP_CONNECTIONS"}
    }
    if connections:
        defaults["CRM_SMTP_CONNECTIONS"] = str(connections)
    command = [str(Path(sys.executable).with_name("crm-worker")), "run", "--once"]
    command += ["--now", NOW.isoformat()]
    if processes:
        command += ["--processes", str(processes)]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=defaults, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The command waits for its worker processes, so their CPU is in its own children's usage.
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"run --once exited {done.returncode}:\n{done.stdout}{done.stderr}")
    summary = next(line for line in done.stdout.splitlines() if line.startswith("sent "))
    sent = int(summary.split()[1].rstrip(","))
    print(
        f"    CPU of the command and its worker processes: {cpu_s:.2f} s = "
        f"{1000 * cpu_s / max(sent, 1):.2f} ms per message (imports and start-up included)"
    )
    span = re.search(r"deliveries handled ([0-9.]+) s after the pass began", done.stderr)
    return sent / elapsed, sent, summary, float(span.group(1)) if span else None


# ---------------------------------------------------------------- (c) the naive design


def naive_broker(redis_url: str):  # type: ignore[no-untyped-def]
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, namespace=NAIVE_NAMESPACE)
    dramatiq.set_broker(broker)
    return broker


def naive_actor(broker, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """What one would write without the product: render and send, one message, one
    connection. Same templates and context shape, a plain EmailMessage, smtplib."""
    import smtplib
    from email.message import EmailMessage
    from email.utils import formataddr, make_msgid

    import dramatiq
    import redis

    from worker.messages.rendering import TemplateRenderer

    renderer = TemplateRenderer(Path(env["CRM_TEMPLATES_DIR"]), "en")
    done = redis.Redis.from_url(env["CRM_REDIS_URL"])
    host, port = env["CRM_SMTP_HOST"], int(env["CRM_SMTP_PORT"])

    def send_greeting(customer: dict, occurrence: dict, company: dict) -> None:
        context = {"customer": customer, "occurrence": occurrence, "company": company}
        rendered = renderer.render("birthday", customer.get("locale"), context)
        msg = EmailMessage()
        msg["From"] = "CRM <crm@example.com>"
        name = f"{customer['first_name']} {customer['last_name']}".strip()
        msg["To"] = formataddr((name, customer["email"]))
        msg["Subject"] = rendered.subject
        msg["Message-ID"] = make_msgid(domain="example.com")
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        with smtplib.SMTP(host, port) as smtp:
            smtp.send_message(msg)
        done.incr(NAIVE_DONE_KEY)

    return dramatiq.actor(
        send_greeting, broker=broker, queue_name=NAIVE_QUEUE, max_retries=0, actor_name="greet"
    )


def naive_worker(threads: int) -> None:
    import threading

    import dramatiq

    env = dict(os.environ)
    broker = naive_broker(env["CRM_REDIS_URL"])
    naive_actor(broker, env)
    worker = dramatiq.Worker(broker, queues={NAIVE_QUEUE}, worker_threads=threads)
    worker.start()
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    worker.stop()


def run_naive(
    env: dict[str, str], processes: int, threads: int, logs: Path, services: dict[str, int]
) -> tuple[float, int]:
    import redis

    from worker.planning.context import record_data

    client = redis.Redis.from_url(env["CRM_REDIS_URL"])
    client.flushdb()
    broker = naive_broker(env["CRM_REDIS_URL"])
    actor = naive_actor(broker, env)
    workers = start_workers(
        [sys.executable, __file__, "--naive-worker", str(threads)], env, processes, logs, "naive"
    )
    runtime = runtime_for(env)
    try:
        wait_consumers(client, NAIVE_NAMESPACE, processes)
        meter = CpuMeter(
            {
                "workers": [w.pid for w in workers],
                "enqueueing (this process)": [os.getpid()],
                **{name: [pid] for name, pid in services.items()},
            }
        )
        meter.start()
        started = time.perf_counter()
        # The naive scheduler: every customer whose birthday it is, one message each.
        sent = 0
        for record in runtime.source.iter_records("customer"):
            born = record["birthday"]
            if born and (born.month, born.day) == (DAY.month, DAY.day) and record["email_opt_in"]:
                occurrence = {"key": f"greet:{record.id}", "tag": "2026", "due_at": NOW.isoformat()}
                actor.send(record_data(record), occurrence, runtime.settings.company)
                sent += 1
        deadline = time.monotonic() + 1800
        while int(client.get(NAIVE_DONE_KEY) or 0) < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        done = int(client.get(NAIVE_DONE_KEY) or 0)
    finally:
        stop_all(workers)
        broker.close()
    print_cpu(cpu, done, elapsed)
    return done / elapsed, done


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (b, c)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (b, c)")
    parser.add_argument(
        "--connections", type=int, default=8, help="SMTP connections per thread (b)"
    )
    parser.add_argument(
        "--naive-threads", type=int, default=8, help="threads per process (c): its best setting"
    )
    parser.add_argument("--redis-url", help="use this Redis (its database is FLUSHED)")
    parser.add_argument("--only", choices=["a", "b", "o", "c"], action="append", help="run only …")
    parser.add_argument(
        "--once-processes", type=int, help="(o) --processes of run --once (default: its own)"
    )
    parser.add_argument(
        "--once-connections",
        type=int,
        help="(o) CRM_SMTP_CONNECTIONS of run --once (default: the shipped default)",
    )
    parser.add_argument("--aiosmtpd", action="store_true", help="use aiosmtpd, not smtp-sink")
    parser.add_argument("--keep", type=Path, help="keep the CRM and logs in this folder")
    parser.add_argument("--postgres", metavar="SERVER", help="(b, c) read the CRM from PostgreSQL")
    parser.add_argument("--aiosmtpd-sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--naive-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aiosmtpd_sink:
        aiosmtpd_sink(args.aiosmtpd_sink)
        return
    if args.naive_worker:
        naive_worker(args.naive_worker)
        return
    parts = set(args.only or ["a", "b", "o", "c"])
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    tmp.mkdir(parents=True, exist_ok=True)
    services = []
    try:
        smtp_port = free_port()
        sink, sink_name = start_sink(smtp_port, tmp, aiosmtpd=args.aiosmtpd)
        services.append(sink)
        service_pids = {"smtp sink": sink.pid}
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis_proc, redis_url = start_redis(tmp)
            services.append(redis_proc)
            service_pids["redis"] = redis_proc.pid
        crm = tmp / "crm"
        write_due_crm(crm, args.messages, DAY)
        env = product_env(crm, redis_url, smtp_port, args.threads, args.connections)
        source = "CSV folder"
        if args.postgres:
            use_postgres(env, crm, args.postgres, args.messages)
            source = "PostgreSQL (SQL source)"
        print(f"sink: {sink_name} on 127.0.0.1:{smtp_port}; redis: {redis_url}; CRM: {source}")
        print(
            f"{args.messages:,} customers due on {DAY}; workers: "
            f"(b) {args.processes} processes × {args.threads} threads × {args.connections} SMTP "
            f"connections, (c) {args.processes} × {args.naive_threads} threads; "
            f"cpus: {os.cpu_count()}"
        )
        rates: dict[str, float] = {}
        if "a" in parts:
            messages = prerender(env)
            size = sum(len(m[2]) for m in messages) / max(len(messages), 1)
            rates["a"] = run_limit(smtp_port, messages)
            print(
                f"(a) limit   {rates['a']:8.0f} msg/s  ({len(messages):,} pre-rendered messages "
                f"of {size:,.0f} bytes, aiosmtplib, {LIMIT_CONNECTIONS} kept-open connections)"
            )
        if "b" in parts:
            with details() as lines:
                rates["b"], counts, queued = run_product(
                    env, args.processes, args.threads, tmp, service_pids
                )
            print(
                f"(b) product {rates['b']:8.0f} msg/s  ({queued:,} queued by the pass; "
                f"ledger: {dict(counts)})"
            )
            print(lines.getvalue(), end="")
        if "o" in parts:
            layout = "its defaults"
            if args.once_processes or args.once_connections:
                chosen = [
                    f"--processes {args.once_processes}" if args.once_processes else "",
                    f"CRM_SMTP_CONNECTIONS={args.once_connections}"
                    if args.once_connections
                    else "",
                ]
                layout = " and ".join(c for c in chosen if c)
            with details() as lines:
                rates["o"], sent, summary, span = run_once_command(
                    env, args.once_processes, args.once_connections
                )
            print(
                f"(o) run --once {rates['o']:5.0f} msg/s  (`crm-worker run --once` with "
                f"{layout}, timed start to exit; it printed: {summary})"
            )
            print(lines.getvalue(), end="")
            if span:
                rates["o-span"] = sent / span
                print(
                    f"    pass start to last delivery (as (b) is timed): {span:.2f} s = "
                    f"{rates['o-span']:.0f} msg/s"
                )
        if "c" in parts:
            with details() as lines:
                rates["c"], done = run_naive(
                    env, args.processes, args.naive_threads, tmp, service_pids
                )
            print(
                f"(c) naive   {rates['c']:8.0f} msg/s  ({done:,} sent, actor per message, "
                "new SMTP connection each)"
            )
            print(lines.getvalue(), end="")
        if "a" in rates and "b" in rates:
            ratio = rates["b"] / rates["a"]
            print(f"b/a = {ratio:.2f}  (target ≥ 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")
        if "c" in rates and "b" in rates:
            ratio = rates["b"] / rates["c"]
            print(f"b/c = {ratio:.2f}  (target ≥ 3: {'met' if ratio >= 3 else 'NOT met'})")
        for key, what in (("o", "start to exit"), ("o-span", "pass to last delivery")):
            if key in rates and "a" in rates:
                ratio = rates[key] / rates["a"]
                verdict = "met" if ratio >= 0.5 else "NOT met"
                print(f"{key}/a = {ratio:.2f}  ({what}; target ≥ 0.5: {verdict})")
            if key in rates and "c" in rates:
                ratio = rates[key] / rates["c"]
                verdict = "met" if ratio >= 4 else "NOT met"
                print(f"{key}/c = {ratio:.2f}  ({what}; target ≥ 4: {verdict})")
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        print(f"measured {stamp}" + (f"; CRM and logs in {tmp}" if args.keep else ""))
    finally:
        stop_all(services)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
