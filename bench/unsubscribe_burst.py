"""The public unsubscribe pages under a burst: requests per second and the intake's memory.

    .venv/bin/python bench/unsubscribe_burst.py                 # 10,000 requests
    .venv/bin/python bench/unsubscribe_burst.py -n 50000 --concurrency 32

Starts a real ``crm-worker intake`` (its own embedded Redis in a temporary data directory,
unless ``--redis-url`` names one, whose database is flushed) and sends the mix of
``tests/unsubscribe_burst.py``: forged, truncated, mangled, replayed and oversized tokens,
wrong methods, bodies and content types, over-sized headers, one client over the rate limit,
over ``--concurrency`` kept-alive connections from one process (httpx, asyncio). Prints the
requests per second, the answers by kind and status, and the intake's resident memory
(VmRSS) after start, after a warm-up of 1,000 requests and after the burst. The client runs on
the same machine and takes a good part of its CPU: the figure is a floor, not the intake's
ceiling.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.unsubscribe_burst import burst, probes, rss_bytes  # noqa: E402

SECRET = "bench unsubscribe secret"
GENUINE = [f"real{n}@example.com" for n in range(20)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="requests in the burst")
    parser.add_argument("--concurrency", type=int, default=16, help="kept-alive connections")
    parser.add_argument("--redis-url", help="a Redis to use (its database is flushed)")
    args = parser.parse_args()

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="crm-bench-burst-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | {
            "CRM_DATA_DIR": str(Path(tmp) / "var"),
            "CRM_SOURCE": str(REPO / "examples" / "crm"),
            "CRM_RULES_DIR": str(REPO / "rules"),
            "CRM_TEMPLATES_DIR": str(REPO / "templates"),
            "CRM_INTAKE_TOKEN": "bench-intake-token-0123456789",
            "CRM_INTAKE_PORT": str(port),
            "CRM_UNSUBSCRIBE_SECRET": SECRET,
            "CRM_UNSUBSCRIBE_URL": "https://links.shop.example.com/u",
        }
        if args.redis_url:
            redis.Redis.from_url(args.redis_url).flushdb()
            env["CRM_REDIS_URL"] = args.redis_url
        log_path = Path(tmp) / "intake.log"
        with log_path.open("wb") as log_file:
            intake = subprocess.Popen(
                [sys.executable, "-c", "from worker.cli import main; main()", "-q", "intake"],
                env=env,
                cwd=tmp,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            started = rss_bytes(intake.pid)
            burst(url, probes(1_000, secret=SECRET.encode(), base_path="/u", genuine=GENUINE))
            warmed = rss_bytes(intake.pid)
            batch = probes(
                args.n,
                secret=SECRET.encode(),
                base_path="/u",
                genuine=GENUINE,
                seed=18,
                first_client=1_000,
            )
            result = burst(url, batch, concurrency=args.concurrency)
            after = rss_bytes(intake.pid)
        finally:
            intake.terminate()
            intake.wait(timeout=30)

    mb = 1024 * 1024
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (before the run ended)")
    print(
        f"burst: {args.n} requests over {args.concurrency} connections in "
        f"{result.seconds:.1f} s = {args.n / result.seconds:.0f} requests/s"
    )
    print(
        f"intake RSS: {started / mb:.1f} MB at start, {warmed / mb:.1f} MB after 1,000 "
        f"requests, {after / mb:.1f} MB after the burst ({(after - warmed) / mb:+.1f} MB)"
    )
    unclear = result.unclear()
    print(f"unclear answers (5xx, no answer, or a status not expected for the probe): {unclear}")
    for (kind, status), count in sorted(result.answers.items()):
        print(f"  {kind:16} {status:3} {count:6}")


if __name__ == "__main__":
    main()
