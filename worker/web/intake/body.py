"""The JSON the CRM posts for one event, validated field by field.

::

    {"id": "crm-8812", "type": "purchase.created", "record_id": "P42",
     "at": "2026-03-14T10:00:00Z", "data": {"channel": "web"}}

``id`` is the CRM's own id of the event (required: a retried post is recognised by it),
``type`` is ``entity.what``, ``record_id`` the id of that entity's record, ``at`` when it
happened (ISO 8601 with offset; default: when it arrives), ``data`` what templates see as
``event.data``. Anything else is refused, so a misspelt key is not silently ignored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from worker.constants import MAX_EVENT_CLOCK_SKEW, MAX_EVENT_JSON_DEPTH
from worker.errors import IntakeError
from worker.planning.events import ID_PATTERN
from worker.rules.models import EVENT_TYPE_PATTERN

JSON_MEDIA_TYPE = "application/json"

_TOO_DEEP = (
    f"the JSON is nested more than {MAX_EVENT_JSON_DEPTH} levels deep; send a flat data object"
)
_ID_HINT = "use 1-128 letters, digits, '.', '_', '-', '@'"
#: What to write instead, for values that do not match their field's pattern.
_PATTERN_HINTS = {
    "id": _ID_HINT,
    "record_id": _ID_HINT,
    "type": "write entity.what, e.g. purchase.created",
}


class EventBody(BaseModel):
    """One posted event; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN, description="The CRM's id of the event.")
    type: str = Field(pattern=EVENT_TYPE_PATTERN, description="entity.what")
    record_id: str = Field(pattern=ID_PATTERN, description="Id of the record it is about.")
    at: AwareDatetime | None = Field(default=None, description="When it happened.")
    data: dict[str, Any] = Field(default_factory=dict, description="event.data in templates.")

    @field_validator("at")
    @classmethod
    def _at_in_utc_range(cls, at: datetime | None) -> datetime | None:
        # 0001-01-01T00:00:00+01:00 is a valid stamp whose UTC time is before year 1: every
        # comparison with another time would overflow later, so it is refused here.
        if at is not None:
            try:
                at.astimezone(UTC)
            except OverflowError:
                raise ValueError(
                    f"{at.isoformat()} is outside the years 1-9999 in UTC; send the time the "
                    "event happened"
                ) from None
        return at


def parse_event(body: bytes, content_type: str | None, now: datetime) -> EventBody:
    """The event in ``body``; :class:`IntakeError` 415 (not JSON by type), 400 (not JSON) or
    422 (naming the first field at fault, every problem in the message)."""
    event = _parse(body, content_type)
    if event.at is not None and event.at - now > MAX_EVENT_CLOCK_SKEW:
        # The event store trims a type's index relative to the newest event's time: a stamp
        # from a broken clock far ahead would push out every real event of its type.
        raise IntakeError(
            422,
            f"{event.at.isoformat()} is more than {MAX_EVENT_CLOCK_SKEW} ahead of the intake's "
            "clock; send the time the event happened (or leave 'at' out)",
            field="at",
        )
    return event


def _parse(body: bytes, content_type: str | None) -> EventBody:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise IntakeError(
            415, f"send Content-Type: {JSON_MEDIA_TYPE}, not {media_type or 'none at all'}"
        )
    try:
        raw = json.loads(body)
    except ValueError as exc:  # also a body that is not UTF-8
        raise IntakeError(400, f"the body is not JSON: {exc}") from None
    except RecursionError:  # json's parser recurses per level: '[' * 60000 exhausts the stack
        raise IntakeError(400, _TOO_DEEP) from None
    _check_values(raw)
    try:
        return EventBody.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        reason = "; ".join(f"{field}: {message}" for field, message in problems)
        raise IntakeError(422, reason, field=problems[0][0]) from None


def _check_values(raw: object) -> None:
    """Refuse what JSON can carry but the event store cannot keep: nesting deeper than
    :data:`~worker.constants.MAX_EVENT_JSON_DEPTH` (encoding it again recurses per level) and
    lone UTF-16 surrogates such as ``"\\ud800"`` (not text: no UTF-8 encoding exists)."""
    pending: list[tuple[object, str, int]] = [(raw, "body", 1)]
    while pending:  # iterative, so no depth of input can exhaust the stack here
        value, where, depth = pending.pop()
        if depth > MAX_EVENT_JSON_DEPTH:
            raise IntakeError(400, _TOO_DEEP, field=where.partition(".")[0])
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                inner = key if where == "body" else f"{where}.{key}"
                pending.append((item, inner, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{where}.{n}", depth + 1) for n, item in enumerate(value))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise IntakeError(
            422,
            f"{where}: {bad} is a lone UTF-16 surrogate, not a character; send text as UTF-8 "
            "(or a surrogate pair escaped as \\uD83D\\uDE00)",
            field=where,
        ) from None


def _problem(error: Any) -> tuple[str, str]:
    field = ".".join(str(part) for part in error["loc"]) or "body"
    message = str(error["msg"])
    if error["type"] == "string_pattern_mismatch" and field in _PATTERN_HINTS:
        message = f"{error['input']!r} is not usable; {_PATTERN_HINTS[field]}"
    elif error["type"] == "timezone_aware":
        message += ", e.g. 2026-03-14T10:00:00Z"
    elif error["type"] == "model_type":
        message = 'the body must be a JSON object, e.g. {"id": …, "type": …, "record_id": …}'
    return field, message
