"""The event intake: an HTTP endpoint where the CRM posts what happened (``purchase.created``).

* :mod:`~worker.web.intake.body` – the JSON an event is posted as, validated field by field;
* :mod:`~worker.web.intake.auth` – a bearer token or an HMAC signature, compared in constant time;
* :mod:`~worker.web.intake.app` – the ASGI app (Starlette) and :func:`~worker.web.intake.app.serve`
  (uvicorn), behind ``crm-worker intake``;
* :mod:`~worker.web.server` – how uvicorn serves it to the internet: a connection limit,
  header and body read deadlines, a bounded shutdown;
* :mod:`~worker.web.throttle` – one log line per kind of trouble per minute, not per client;
* :mod:`~worker.web.intake.client` – posting one event (``crm-worker event --post``).
"""

from __future__ import annotations

from worker.web.intake.app import create_app, serve
from worker.web.intake.auth import IntakeAuth
from worker.web.intake.client import post_event

__all__ = ["IntakeAuth", "create_app", "post_event", "serve"]
