"""SMTP alone: CPU per message of the product's ``SmtpChannel`` and of a bare aiosmtplib loop,
in this one process, over the same kept-open connections to the same local sink.

    .venv/bin/python bench/smtp_channel.py                  # 10,000 messages, 4 connections
    .venv/bin/python bench/smtp_channel.py -n 2000 --connections 1

The sink is Postfix's ``smtp-sink`` when installed (it offers PIPELINING), else aiosmtpd in a
subprocess (which does not; said so in the output). Messages: 2,738 bytes each, the size of
the product's birthday mail. The channel gets them as ``crm-worker worker`` does: batches of
50 through ``send_each``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery import free_port, start_sink

BATCH = 50
HEAD = b"Subject: Happy birthday\r\nFrom: Example Shop <crm@shop.example.com>\r\n\r\n"
BODY = HEAD + b"x" * 70 + b"\r\n"
DATA = BODY * (2738 // len(BODY)) + b"y" * (2738 % len(BODY))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare(port: int, n: int, connections: int) -> None:
    import aiosmtplib

    left = list(range(n))

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        while left:
            i = left.pop()
            await client.sendmail("crm@shop.example.com", [f"c{i}@example.com"], DATA)
        await client.quit()

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    asyncio.run(main())


def channel(port: int, n: int, connections: int, data_dir: Path) -> None:
    from worker.channels import Outgoing, SmtpChannel
    from worker.settings import load_settings

    settings = load_settings(
        {
            "CRM_SMTP_HOST": "127.0.0.1",
            "CRM_SMTP_PORT": str(port),
            "CRM_SMTP_SECURITY": "none",
            "CRM_SMTP_CONNECTIONS": str(connections),
            "CRM_DATA_DIR": str(data_dir),
            "CRM_MAIL_FROM": "crm@shop.example.com",
        }
    )
    messages = [
        Outgoing(f"k{i}", "email", "crm@shop.example.com", f"c{i}@example.com", f"<{i}@x>", DATA)
        for i in range(n)
    ]
    failures = []

    def done(message: Outgoing, outcome: object) -> None:
        if isinstance(outcome, Exception):
            failures.append(outcome)

    smtp = SmtpChannel(settings)
    try:
        for start in range(0, n, BATCH):
            smtp.send_each(messages[start : start + BATCH], done)
    finally:
        smtp.close()
    if failures:
        raise SystemExit(f"{len(failures)} failed, e.g. {failures[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--aiosmtpd", action="store_true", help="use aiosmtpd, not smtp-sink")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        port = free_port()
        sink, name = start_sink(port, Path(tmp), aiosmtpd=args.aiosmtpd)
        try:
            print(f"sink: {name}; {args.messages:,} messages of {len(DATA):,} bytes")
            for label, run in (
                ("bare aiosmtplib", lambda: bare(port, args.messages, args.connections)),
                (
                    "SmtpChannel",
                    lambda: channel(port, args.messages, args.connections, Path(tmp)),
                ),
            ):
                started, cpu = time.perf_counter(), cpu_s()
                run()
                elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
                print(
                    f"{label:16} {args.messages / elapsed:8.0f} msg/s  "
                    f"CPU {1000 * cpu / args.messages:.3f} ms per message "
                    f"(connections: {args.connections})"
                )
        finally:
            sink.kill()


if __name__ == "__main__":
    main()
