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

Trigger kinds: ``birthday`` (yearly on a customer date), ``anniversary`` (yearly on a record's
date, e.g. ``purchase.purchased_at``), ``after`` (once, a delay after a date), ``unresolved``
(follow-ups while a complaint is open) and ``event`` (when the CRM reports one); see
:mod:`worker.planning.triggers` for their due times and occurrence tags.

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

from worker.constants import DEFAULT_GRACE, EVENT_TTL
from worker.localtime import is_known_zone

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
FIELD_PATH_PATTERN = r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$"
EVENT_TYPE_PATTERN = r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_.-]*$"
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"

#: Customer fields that hold a member of staff's address: messages to them are internal alerts
#: (no unsubscribe link, not counted by the contact cap, not addressed by the customer's name).
STAFF_ADDRESS_FIELDS = frozenset({"customer.account_manager_email"})

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


def format_duration(value: timedelta) -> str:
    """A duration the way rule files write it: ``timedelta(days=2, hours=12)`` → ``2d 12h``."""
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
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+d)?\s*(\d+h)?\s*(\d+m)?$"}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _entity_of(path: str) -> str:
    return path.partition(".")[0]


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


class AnniversaryTrigger(_Strict):
    """Yearly on the date of a record (``purchase.purchased_at``), at the customer's local hour.

    The occurrence tag is the anniversary number (1 = one year after), so a date corrected
    after the mail went out never yields a second mail for the same anniversary.
    """

    field: str = Field(
        pattern=FIELD_PATH_PATTERN, description="Date of the record, e.g. purchase.purchased_at."
    )
    years: list[Annotated[int, Field(ge=1, le=200)]] | None = Field(
        default=None,
        min_length=1,
        description="Which anniversaries (1 = one year after); leave out for every year.",
    )
    at: LocalTime = time(10, 0)
    feb29: Literal["feb28", "mar1"] = Field(
        default="feb28", description="Where Feb 29 dates go in common years."
    )

    @property
    def entity(self) -> str:
        return _entity_of(self.field)


class AfterTrigger(_Strict):
    """Once, a delay after a date field (``7d`` after ``purchase.delivered_at``).

    With ``at`` the message goes at that local hour on the day the delay ends.
    """

    field: str = Field(
        pattern=FIELD_PATH_PATTERN, description="Date of the record, e.g. purchase.delivered_at."
    )
    delay: Duration = Field(description="How long after the date, e.g. 7d.")
    at: LocalTime | None = Field(
        default=None, description="Local hour on the day the delay ends; leave out: exact delay."
    )

    @property
    def entity(self) -> str:
        return _entity_of(self.field)


class UnresolvedTrigger(_Strict):
    """A complaint still open: first ``after`` the open date, then ``every`` …, ``times`` at most.

    Stops as soon as ``resolved`` is set (checked again at send time). The tag is the follow-up
    number, 1 to ``times``.
    """

    field: str = Field(
        default="complaint.opened_at",
        pattern=FIELD_PATH_PATTERN,
        description="When the case was opened.",
    )
    resolved: str = Field(
        default="complaint.resolved_at",
        pattern=FIELD_PATH_PATTERN,
        description="Set when the case is closed; empty while it is open.",
    )
    after: Duration = Field(description="First follow-up this long after opening, e.g. 2d.")
    every: Duration | None = Field(
        default=None, description="Then again this often, e.g. 3d (needed when times > 1)."
    )
    times: int = Field(default=1, ge=1, le=100, description="At most this many follow-ups.")

    @model_validator(mode="after")
    def _consistent(self) -> UnresolvedTrigger:
        if _entity_of(self.resolved) != _entity_of(self.field):
            raise ValueError(
                f"resolved ({self.resolved}) must be a field of the same record as {self.field}"
            )
        if self.times > 1 and (self.every is None or self.every <= timedelta(0)):
            raise ValueError("times > 1 needs 'every:' (e.g. every: 3d) between follow-ups")
        return self

    @property
    def entity(self) -> str:
        return _entity_of(self.field)


class EventTrigger(_Strict):
    """When the CRM reports an event (``purchase.created``); the tag is the event id."""

    type: str = Field(
        pattern=EVENT_TYPE_PATTERN,
        description="entity.what, e.g. purchase.created or complaint.opened.",
    )

    @property
    def entity(self) -> str:
        return _entity_of(self.type)


TriggerSpec = BirthdayTrigger | AnniversaryTrigger | AfterTrigger | UnresolvedTrigger | EventTrigger


class Trigger(_Strict):
    """Exactly one trigger kind, written as its key."""

    birthday: BirthdayTrigger | None = None
    anniversary: AnniversaryTrigger | None = None
    after: AfterTrigger | None = None
    unresolved: UnresolvedTrigger | None = None
    event: EventTrigger | None = None

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
    def spec(self) -> TriggerSpec:
        spec = getattr(self, self.kind)
        assert spec is not None
        return spec  # type: ignore[no-any-return]


class SendWindow(_Strict):
    """Quiet hours, in the customer's local time: a message due outside waits for ``from``.

    ``from`` after ``to`` spans midnight (``from: "22:00", to: "06:00"``).
    """

    start: LocalTime = Field(alias="from", description="Local time the window opens.")
    end: LocalTime = Field(alias="to", description="Local time the window closes.")

    @model_validator(mode="after")
    def _not_empty(self) -> SendWindow:
        if self.start == self.end:
            raise ValueError("'from' and 'to' are equal: the window would never open")
        return self


class SendAction(_Strict):
    """One message the rule sends for each occurrence."""

    id: str | None = Field(
        default=None,
        pattern=SLUG_PATTERN,
        description="Names this message within the rule; defaults to the channel name.",
    )
    channel: Literal["email", "webhook"]
    webhook: str | None = Field(
        default=None,
        pattern=SLUG_PATTERN,
        description="channel webhook: a name from CRM_WEBHOOKS (URLs stay out of rule files).",
    )
    template: str = Field(pattern=SLUG_PATTERN, description="Folder under templates/.")
    to: str = Field(pattern=FIELD_PATH_PATTERN, description="Field holding the address.")
    locale: str | None = Field(
        default=None,
        pattern=LOCALE_PATTERN,
        description="Language of an internal message (to staff), e.g. de; default "
        "CRM_INTERNAL_LOCALE. A customer always reads their own language.",
    )
    timezone: str | None = Field(
        default=None,
        description="Time zone dates and times of an internal message are shown in, e.g. "
        "Europe/Berlin; default CRM_INTERNAL_TIMEZONE. A customer reads their own zone.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and not is_known_zone(value):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Berlin")
        return value

    @model_validator(mode="after")
    def _webhook_named(self) -> SendAction:
        if self.to_customer and (self.locale is not None or self.timezone is not None):
            raise ValueError(
                "'locale:' and 'timezone:' are for messages to staff; a customer reads their "
                "own language and zone (customer.locale, customer.timezone)"
            )
        if self.channel == "webhook" and self.webhook is None:
            raise ValueError("a webhook message names its endpoint: add 'webhook: <name>'")
        if self.channel != "webhook" and self.webhook is not None:
            raise ValueError("'webhook:' is only for 'channel: webhook'")
        return self

    @property
    def action_id(self) -> str:
        return self.id or self.channel

    @property
    def to_customer(self) -> bool:
        """Is this message for the customer (unsubscribe link, contact cap), not for staff?"""
        return self.to.startswith("customer.") and self.to not in STAFF_ADDRESS_FIELDS


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
    kind: Literal["marketing", "service"] = Field(
        default="marketing",
        description="marketing (needs opt-in, carries unsubscribe links, honours unsubscribes) "
        "or service (delivery and complaint follow-ups: no unsubscribe links, only stopped by "
        "bounced or complained addresses).",
    )
    trigger: Trigger
    when: str | None = Field(
        default=None, description="Sandboxed Jinja expression; the message goes only if true."
    )
    grace: Duration = Field(
        default=DEFAULT_GRACE, description="How late a due message may still go out."
    )
    send_window: SendWindow | None = Field(
        default=None,
        description='Quiet hours: only between from and to, customer\'s local time ("08:00").',
    )
    exempt_from_cap: bool = Field(
        default=False,
        description="Not counted against, nor stopped by, the contact cap (complaint handling).",
    )
    send: list[SendAction] = Field(min_length=1)

    @model_validator(mode="after")
    def _events_kept_long_enough(self) -> Rule:
        if self.trigger.event is not None and self.grace > EVENT_TTL:
            raise ValueError(
                f"grace of an event rule must be at most {format_duration(EVENT_TTL)} "
                "(events are kept that long)"
            )
        return self

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
