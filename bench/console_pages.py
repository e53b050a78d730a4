"""How long each console page takes to answer, over a CRM of a given size.

The console computes its pages on request: ``/rules`` runs ``check`` and a 30-day calendar
(every record of every rule), ``/upcoming`` a calendar of N days, ``/customers/<id>`` the
explanation and a scan of the delivery log. This prints the median answer time of each page
(in-process, through the real app and a real Redis), and of the first request (``/rules``
counts the next 30 days once per five minutes), with the machine's load, so a change can
be compared with the code before it and an operator can see what a CRM of their size costs.

    .venv/bin/python bench/console_pages.py                        # the sample CRM
    .venv/bin/python bench/console_pages.py --source var/bench-crm-100000 --repeat 3

Redis: ``$REDIS_URL`` (its database is emptied) or an embedded one under ``var/bench-console``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.runtime import Runtime  # noqa: E402
from worker.settings import load_settings  # noqa: E402
from worker.web.console import ConsoleUsers, create_console_app  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PAGES = (
    "/rules",
    "/rules/birthday-greeting",
    "/upcoming?days=7",
    "/upcoming?days=30",
    "/customers/1",
    "/preview/birthday-greeting/1",
    "/deliveries",
)
PASSWORD = "benchmark password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO / "examples" / "crm"), help="CRM_SOURCE")
    parser.add_argument("--repeat", type=int, default=5, help="requests per page")
    args = parser.parse_args()
    env = {
        "CRM_SOURCE": args.source,
        "CRM_RULES_DIR": str(REPO / "rules"),
        "CRM_TEMPLATES_DIR": str(REPO / "templates"),
        "CRM_DATA_DIR": tempfile.mkdtemp(prefix="bench-console-"),
    }
    if os.environ.get("REDIS_URL"):
        env["CRM_REDIS_URL"] = os.environ["REDIS_URL"]
    runtime = Runtime(load_settings(env))
    try:
        if os.environ.get("REDIS_URL"):
            runtime.redis.flushdb()
        ConsoleUsers(runtime.redis).add("bench", PASSWORD, role="editor")
        client = TestClient(create_console_app(runtime))
        form = client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
        login = {"csrf": form, "name": "bench", "password": PASSWORD}
        client.post("/login", data=login, follow_redirects=False)
        load = os.getloadavg()
        print(f"source {args.source}; {os.cpu_count()} cores, load {load[0]:.2f}")
        for page in PAGES:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                answer = client.get(page)
                times.append(time.perf_counter() - start)
                assert answer.status_code == 200, (page, answer.status_code)
            first, median = times[0] * 1000, statistics.median(times) * 1000
            print(f"{page:32} first {first:7.0f} ms   median {median:7.0f} ms")
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
