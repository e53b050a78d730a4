"""Posting one event to a running intake, as the CRM would (``crm-worker event --post``).

Example::

    answer = post_event("http://127.0.0.1:8080/events",
                        {"id": "crm-8812", "type": "purchase.created", "record_id": "P42"},
                        token="…", secret=None)
    answer["status"]  # "accepted", or "duplicate" for an id posted before
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from worker.constants import INTAKE_CLIENT_TIMEOUT_S
from worker.errors import IntakeError
from worker.web.intake.app import EVENTS_PATH
from worker.web.intake.auth import sign
from worker.web.intake.body import JSON_MEDIA_TYPE


def events_url(url: str) -> str:
    """``url`` itself, or its ``/events`` endpoint when only the server is named."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path=EVENTS_PATH)) if parsed.path in ("", "/") else url


def post_event(
    url: str,
    event: Mapping[str, Any],
    *,
    token: str | None,
    secret: bytes | None,
    timeout_s: float = INTAKE_CLIENT_TIMEOUT_S,
) -> dict[str, Any]:
    """Post ``event`` (the JSON of :class:`~worker.web.intake.body.EventBody`) with the bearer
    ``token`` and/or signed with ``secret``; return the intake's answer (accepted or duplicate).

    Raises :class:`IntakeError` with the intake's status, reason and field when it refuses,
    with status ``None`` when it cannot be reached.
    """
    body = json.dumps(dict(event), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": JSON_MEDIA_TYPE}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if secret:
        headers.update(sign(secret, body, time.time()))
    target = events_url(url)
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise IntakeError(None, f"no answer from {httpx.URL(target).host}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {"error": " ".join(response.text.split())[:200]}
    if response.status_code not in (200, 202):
        raise IntakeError(
            response.status_code,
            f"the intake answered {response.status_code}: {answer.get('error')}",
            field=answer.get("field"),
        )
    return answer
