"""The shape of a rule file, as pydantic models.

A rule file holds one rule::

    id: birthday-greeting
    description: Birthday e-card for every customer who agreed to mail
    trigger:
      birthday:
        field: customer.birthday
        at: "09:00"
        feb29: feb28
    when: customer.email_opt_in
    grace: 1d
    send:
      - channel: email
        template: birthday
        to: customer.email

Models forbid unknown keys and use strict types, so a typo or a YAML value of the wrong kind is
an error with a position (see :mod:`worker.rules.loader`) instead of a silent default.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from functools import cached_property
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from worker.constants import DEFAULT_GRACE

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
FIELD_PATH_PATTERN = r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$"

_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_DURATION_RE = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*$")


def parse_local_time(value: object) -> time:
    """``"09:00"`` or ``"9:30"`` → :class:`datetime.time`; anything else is a clear error."""
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        raise ValueError(f'write the time as text in quotes, like "09:00" (got {value!r})')
    match = _TIME_RE.match(value.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f'{value!r} is not a time of day; write "HH:MM" from "00:00" to "23:59"')
    return time(int(match[1]), int(match[2]))


def parse_duration(value: object) -> timedelta:
    """``"1d"``, ``"36h"``, ``"2d 12h"``, ``"90m"`` → :class:`datetime.timedelta`."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration; write e.g. 1d, 36h, 2d 12h or 90m")
    days, hours, minutes = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def _format_duration(value: timedelta) -> str:
    minutes = int(value.total_seconds()) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts) or "0m"


LocalTime = Annotated[
    time,
    BeforeValidator(parse_local_time),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^([01]?\d|2[0-3]):[0-5]\d$"}),
]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+d)?\s*(\d+h)?\s*(\d+m)?$"}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BirthdayTrigger(_Strict):
    """Yearly on a customer's date field (month and day), at a local hour."""

    field: str = Field(default="customer.birthday", pattern=FIELD_PATH_PATTERN)
    at: LocalTime = time(9, 0)
    feb29: Literal["feb28", "mar1"] = Field(
        default="feb28", description="Where Feb 29 birthdays go in common years."
    )

    @field_validator("field")
    @classmethod
    def _customer_field(cls, value: str) -> str:
        if not value.startswith("customer."):
            raise ValueError(
                f"a birthday is a customer field, like customer.birthday (got {value})"
            )
        return value

    @property
    def entity(self) -> str:
        return "customer"


class Trigger(_Strict):
    """Exactly one trigger kind, written as its key."""

    birthday: BirthdayTrigger | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            allowed = ", ".join(type(self).model_fields)
            raise ValueError(f"name exactly one trigger kind ({allowed}); found {len(kinds)}")
        return self

    # Cached: read for every record of a pass (millions of times), and the model is frozen.
    @cached_property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @cached_property
    def spec(self) -> BirthdayTrigger:
        spec = getattr(self, self.kind)
        assert spec is not None
        return spec  # type: ignore[no-any-return]


class SendAction(_Strict):
    """One message the rule sends for each occurrence."""

    id: str | None = Field(
        default=None,
        pattern=SLUG_PATTERN,
        description="Names this message within the rule; defaults to the channel name.",
    )
    channel: Literal["email"]
    template: str = Field(pattern=SLUG_PATTERN, description="Folder under templates/.")
    to: str = Field(pattern=FIELD_PATH_PATTERN, description="Field holding the address.")

    @property
    def action_id(self) -> str:
        return self.id or self.channel


class Rule(_Strict):
    """One automation: when to send what to whom."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        json_schema_extra={"title": "CRM worker rule"},
    )

    id: str = Field(pattern=SLUG_PATTERN, description="Stable id; part of every occurrence key.")
    description: str = ""
    enabled: bool = True
    trigger: Trigger
    when: str | None = Field(
        default=None, description="Sandboxed Jinja expression; the message goes only if true."
    )
    grace: Duration = Field(
        default=DEFAULT_GRACE, description="How late a due message may still go out."
    )
    send: list[SendAction] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_action_ids(self) -> Rule:
        seen: set[str] = set()
        for action in self.send:
            if action.action_id in seen:
                raise ValueError(
                    f"two messages are both named {action.action_id!r}; give each an 'id:'"
                )
            seen.add(action.action_id)
        return self
