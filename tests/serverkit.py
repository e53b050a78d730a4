"""A web app of the worker (the intake, the console) served by a real uvicorn, configured as
its command configures it, for tests that talk to it over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.faultkit import free_port
from worker.settings import Settings
from worker.web.server import ServerLimits, server_config


def serve_app(app: Any, settings: Settings) -> Iterator[str]:
    """``app`` served on a free port of 127.0.0.1 under the limits of ``settings``; yields its
    base URL, and stops the server when the generator closes."""
    port = free_port()
    limits = ServerLimits.from_settings(settings)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, limits=limits))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
