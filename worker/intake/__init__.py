"""The event intake: an HTTP endpoint where the CRM posts what happened (``purchase.created``).

* :mod:`~worker.intake.body` – the JSON an event is posted as, validated field by field;
* :mod:`~worker.intake.auth` – a bearer token or an HMAC signature, compared in constant time;
* :mod:`~worker.intake.app` – the ASGI app (Starlette) and :func:`~worker.intake.app.serve`
  (uvicorn), behind ``crm-worker intake``;
* :mod:`~worker.intake.server` – how uvicorn serves it to the internet: a connection limit,
  header and body read deadlines, a bounded shutdown;
* :mod:`~worker.intake.throttle` – one log line per kind of trouble per minute, not per client;
* :mod:`~worker.intake.client` – posting one event (``crm-worker event --post``).
"""

from __future__ import annotations

from worker.intake.app import create_app, serve
from worker.intake.auth import IntakeAuth
from worker.intake.client import post_event

__all__ = ["IntakeAuth", "create_app", "post_event", "serve"]
