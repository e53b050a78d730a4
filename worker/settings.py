"""Configuration: the one module that reads the environment.

Every setting has the ``CRM_`` prefix and may also come from a ``.env`` file in the working
directory. :func:`load_settings` returns a frozen :class:`Settings` that the rest of the package
receives as an argument; nothing else looks at ``os.environ``.

Example::

    >>> from worker.settings import load_settings
    >>> settings = load_settings({"CRM_TIMEZONE": "Europe/Berlin"})
    >>> settings.timezone
    'Europe/Berlin'
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.constants import (
    BROKER_HEARTBEAT_TIMEOUT,
    BROKER_MAINTENANCE_CHANCE,
    CLAIM_DEADLINE,
    CRM_EVENTS_ENDPOINT,
    MIN_INTAKE_SECRET_CHARS,
    QUEUE_DEADLINE,
    RETRY_BACKOFF_FIRST,
    SCHEDULER_LOCK_INTERVALS,
    SCHEDULER_LOCK_TTL,
    SEND_LEASE,
    SMTP_IDLE_CHECK,
    SMTP_IDLE_TIMEOUT,
    STOP_TIMEOUT,
    SWEEP_INTERVAL,
)
from worker.errors import ConfigError
from worker.rules.models import parse_duration

ENV_PREFIX = "CRM_"

SmtpSecurity = Literal["none", "starttls", "tls"]
MailboxSecurity = Literal["none", "starttls", "tls"]


_CAP_RE = re.compile(r"^\s*(\d+)\s*/\s*(.+?)\s*$")


@dataclass(frozen=True)
class ContactCap:
    """``CRM_CONTACT_CAP``: at most ``limit`` messages per customer in any ``period``
    (enforced by :mod:`worker.planning.contact_policy`)."""

    limit: int
    period: timedelta

    @classmethod
    def parse(cls, text: str) -> ContactCap:
        """``"3/7d"`` → 3 messages per 7 days; ``ValueError`` with the expected form."""
        match = _CAP_RE.match(text)
        try:
            if not match:
                raise ValueError
            cap = cls(int(match[1]), parse_duration(match[2]))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a contact cap; write messages/period, e.g. 3/7d or 1/24h"
            ) from None
        if cap.limit < 1 or cap.period <= timedelta(0):
            raise ValueError(f"{text!r}: the cap needs at least 1 message in a period over 0")
        return cap

    def __str__(self) -> str:
        return f"{self.limit} per {self.period}"


class Settings(BaseSettings):
    """Everything an operator can configure, typed and validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="forbid",
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis for queue, ledger and locks. Unset: an embedded Redis under data_dir.",
    )
    data_dir: Path = Field(default=Path("var"), description="Embedded Redis data and outbox.")
    source: str = Field(
        default="examples/crm",
        description="Where the CRM data is: a CSV folder (plain path or 'csv:PATH') or a "
        "SQLAlchemy database URL (with CRM_SOURCE_QUERIES).",
    )
    rules_dir: Path = Field(default=Path("rules"), description="Folder of YAML rule files.")
    templates_dir: Path = Field(default=Path("templates"), description="Jinja templates.")
    timezone: str = Field(default="UTC", description="Time zone of customers without one.")
    default_locale: str = Field(default="en", description="Last step of the locale fallback.")
    internal_locale: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
        description="Language of internal mail (alerts to account managers) when the send step "
        "names none. Unset: default_locale.",
    )
    internal_timezone: str | None = Field(
        default=None,
        description="Time zone of internal mail when the send step names none. Unset: timezone.",
    )

    smtp_host: str | None = Field(default=None, description="Unset: mail goes to outbox_dir.")
    smtp_port: int | None = Field(
        default=None, ge=1, le=65535, description="Default 25, 587 (starttls) or 465 (tls)."
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: SmtpSecurity = "starttls"
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    mail_from: str = Field(default="CRM <crm@example.com>", description="From header and sender.")
    outbox_dir: Path | None = Field(
        default=None, description="Where .eml files go without SMTP. Default data_dir/outbox."
    )

    company_name: str = Field(default="Example Shop", description="Shown in message footers.")
    company_address: str = Field(
        default="Example Street 1, 12345 Example City",
        description="Postal address in every footer (required by anti-spam laws).",
    )
    crm_customer_url: str | None = Field(
        default=None,
        description="A customer's page in the CRM, with {id}, linked from internal alerts: "
        "https://crm.example.com/contacts/{id}.",
    )

    queue_name: str = Field(default="crm-messages", pattern=r"^[A-Za-z0-9_.-]+$")
    worker_processes: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Worker processes of `run` and `worker`; unset: the CPUs this process may "
        "use (affinity and cgroup quota).",
    )
    # 1 thread x 8 SMTP connections per process was the fastest split on 2 cores
    # (bench/README.md): one thread keeps the GIL uncontended, 8 connections keep the relay busy.
    worker_threads: int = Field(default=1, ge=1, le=256)
    stop_timeout_s: float = Field(
        default=STOP_TIMEOUT.total_seconds(),
        gt=0,
        description="On SIGTERM, worker processes still draining after this are killed.",
    )
    scheduler_interval_s: float = Field(default=60.0, gt=0)
    plan_horizon_h: float = Field(
        default=36.0,
        ge=2.0,
        le=24.0 * 30,
        description="How far ahead a full planning pass plans into the due-index (hours); the "
        "next full pass comes an hour before the horizon ends.",
    )
    change_overlap_s: float = Field(
        default=120.0,
        ge=0.0,
        description="How far before the last change seen a change pass reads again (seconds): "
        "longer than the CRM's longest write transaction plus its clock's skew from ours.",
    )
    scheduler_lock_ttl_s: float = Field(
        default=SCHEDULER_LOCK_TTL.total_seconds(),
        gt=0,
        description="A leader scheduler silent this long is replaced by a standby.",
    )

    reply_to: str | None = Field(default=None, description="Reply-To header of every mail.")
    unsubscribe_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of unsubscribe links. Unset: a random one kept in Redis.",
    )
    unsubscribe_old_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Retired HMAC keys of unsubscribe links, as a JSON list: links in mail "
        "signed with them still work after CRM_UNSUBSCRIBE_SECRET is rotated.",
    )
    unsubscribe_url: str | None = Field(
        default=None,
        description="HTTPS base of unsubscribe links. Default https://<sender domain>/unsubscribe.",
    )
    unsubscribe_mailto: str | None = Field(
        default=None, description="Mailbox of mailto unsubscribes. Default unsubscribe@<domain>."
    )
    dkim_selector: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="DKIM selector."
    )
    dkim_private_key_file: Path | None = Field(
        default=None, description="PEM private key; with dkim_selector, every mail is signed."
    )
    dkim_domain: str | None = Field(default=None, description="DKIM d=; default sender domain.")
    contact_cap: str | None = Field(
        default=None,
        description="At most K messages per customer per period, e.g. '3/7d'. Unset: no cap.",
    )

    source_queries: Path | None = Field(
        default=None,
        description="SQL sources: YAML file of one read-only query per entity (see README).",
    )
    webhooks: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Named webhook URLs as JSON, e.g. {"sales-chat": "https://hooks…"}.',
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key: set, every webhook request is signed."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    verp_address: str | None = Field(
        default=None,
        description="Set (e.g. bounces@shop.example.com): VERP, each mail's envelope sender is "
        "bounces+<delivery digest>@… so a bounce names its delivery. Unset: the From address.",
    )
    crm_events_url: SecretStr | None = Field(
        default=None,
        description="Where the CRM hears of every suppression change (unsubscribed, bounced, "
        "complained, re-subscribed): a URL, or a name in CRM_WEBHOOKS. Needs "
        "CRM_WEBHOOK_SECRET. Unset: no events.",
    )

    smtp_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle for the relay's certificate; default: system."
    )
    smtp_idle_check_s: float = Field(
        default=SMTP_IDLE_CHECK.total_seconds(),
        gt=0,
        description="A kept-open SMTP connection idle this long is probed.",
    )
    smtp_idle_timeout_s: float = Field(
        default=SMTP_IDLE_TIMEOUT.total_seconds(),
        gt=0,
        description="A connection idle this long is replaced without asking.",
    )
    smtp_connections: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Kept-open SMTP connections per worker thread, sending a batch at once.",
    )
    send_lease_s: float = Field(
        default=SEND_LEASE.total_seconds(),
        gt=0,
        description="After a worker died mid-send, another resends after this.",
    )
    claim_deadline_s: float = Field(
        default=CLAIM_DEADLINE.total_seconds(),
        gt=0,
        description="A delivery claimed but not queued this long is queued by the sweeper.",
    )
    queue_deadline_s: float = Field(
        default=QUEUE_DEADLINE.total_seconds(),
        gt=0,
        description="A queued delivery no worker took this long (plus backlog) is queued again.",
    )
    sweep_interval_s: float = Field(
        default=SWEEP_INTERVAL.total_seconds(),
        gt=0,
        description="How often workers and schedulers take over deliveries past their deadline.",
    )
    retry_backoff_s: float = Field(
        default=RETRY_BACKOFF_FIRST.total_seconds(),
        gt=0,
        description="First retry delay after a transient failure; doubles.",
    )
    broker_heartbeat_timeout_s: float = Field(
        default=BROKER_HEARTBEAT_TIMEOUT.total_seconds(),
        gt=0,
        description="A worker silent this long is dead; its messages requeue.",
    )
    broker_maintenance_chance: int = Field(
        default=BROKER_MAINTENANCE_CHANCE,
        ge=1,
        le=1_000_000,
        description="Per million commands: requeue dead work.",
    )
    mailbox_host: str | None = Field(
        default=None,
        description="IMAP server of the unsubscribe/bounce mailbox (`crm-worker mailbox`).",
    )
    mailbox_port: int | None = Field(
        default=None, ge=1, le=65535, description="Default 993 (tls) or 143 (starttls, none)."
    )
    mailbox_user: str | None = None
    mailbox_password: SecretStr | None = None
    mailbox_tls: MailboxSecurity = "tls"
    mailbox_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle for the IMAP server's certificate (tls, starttls); "
        "default: the system's.",
    )
    mailbox_folder: str = Field(default="INBOX", description="Where bounces and requests arrive.")
    mailbox_folder_prefix: str = Field(
        default="crm",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Handled mails are moved to <prefix>/bounced, <prefix>/complaint, ….",
    )
    mailbox_poll_s: float = Field(default=60.0, gt=0, description="Pause between mailbox passes.")
    mailbox_timeout_s: float = Field(default=30.0, gt=0)
    mailbox_soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        description="Soft bounces (mailbox full, 4.x.x) of one address within the window after "
        "which it is suppressed.",
    )
    mailbox_soft_bounce_days: float = Field(
        default=14.0, gt=0, description="The window soft bounces are counted in."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics here; unset: off."
    )
    intake_token: SecretStr | None = Field(
        default=None, description="Event intake: the CRM sends 'Authorization: Bearer <token>'."
    )
    intake_secret: SecretStr | None = Field(
        default=None, description="Event intake: HMAC-SHA256 key the CRM signs each request with."
    )
    intake_host: str = Field(default="127.0.0.1", description="Event intake: address to listen on.")
    intake_port: int = Field(default=8080, ge=1, le=65535, description="Event intake: TCP port.")
    intake_allow_unauthenticated: bool = Field(
        default=False,
        description="Event intake without token or secret; only on a loopback address.",
    )
    intake_max_connections: int = Field(
        default=500,
        ge=1,
        description="Event intake: open connections at most; one more is answered 503.",
    )
    intake_header_timeout_s: float = Field(
        default=10.0, gt=0, description="Event intake: a request's headers must arrive within this."
    )
    intake_body_timeout_s: float = Field(
        default=30.0, gt=0, description="Event intake: a request's body must arrive within this."
    )
    intake_keep_alive_s: int = Field(
        default=5, ge=1, description="Event intake: an idle kept-alive connection is closed after."
    )
    intake_shutdown_timeout_s: int = Field(
        default=10,
        ge=1,
        description="Event intake: on SIGTERM, requests still running after this are cancelled.",
    )

    console_host: str = Field(
        default="127.0.0.1", description="Web console (`crm-worker console`): address to listen on."
    )
    console_port: int = Field(default=8090, ge=1, le=65535, description="Web console: TCP port.")
    console_https: bool = Field(
        default=False,
        description="Web console is served behind HTTPS (a TLS proxy): cookies get `Secure` and "
        "pages send HSTS.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() passes the environment in explicitly (so tests can hand in their own);
        # reading os.environ here as well would let the real environment leak into them.
        return (init_settings, dotenv_settings)

    @field_validator("timezone", "internal_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like 'Europe/Berlin'"
            ) from exc
        return value

    @field_validator("crm_customer_url")
    @classmethod
    def _customer_link(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://\S*\{id\}\S*", value):
            raise ValueError(
                "write the address of a customer's page with {id} where the customer id goes, "
                "e.g. https://crm.example.com/contacts/{id}"
            )
        return value

    @field_validator("mail_from")
    @classmethod
    def _sender_has_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n\0"):
            raise ValueError(f"not an email address: {value!r}; write 'Name <crm@your-domain>'")
        return value

    @field_validator("reply_to", "unsubscribe_mailto")
    @classmethod
    def _optional_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, address = parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n\0,"):
            raise ValueError(f"not one email address: {value!r}; write 'Name <box@your-domain>'")
        return value

    @field_validator("verp_address")
    @classmethod
    def _verp_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.strip().rpartition("@")
        if not at or not re.fullmatch(r"[A-Za-z0-9._-]{1,30}", local) or "." not in domain:
            raise ValueError(
                f"not a plain address: {value!r}; write the bounce mailbox, e.g. "
                "'bounces@shop.example.com' (no '+', no name: the tag is added after a '+')"
            )
        if not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
            raise ValueError(f"{value!r}: write the domain in ASCII (its xn-- form)")
        return f"{local}@{domain.lower()}"

    @field_validator("unsubscribe_url")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("https://") or any(c in value for c in ' <>,"\r\n\0?#'):
            raise ValueError(
                f"not an HTTPS base URL: {value!r}; write 'https://your-domain/unsubscribe' "
                "(mail clients only do one-click unsubscribe over HTTPS)"
            )
        return value

    @field_validator("webhooks", "unsubscribe_old_secrets", mode="before")
    @classmethod
    def _json(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            example = {
                "webhooks": '{"sales-chat": "https://hooks.example.com/…"}',
                "unsubscribe_old_secrets": '["old secret", "older secret"]',
            }[str(info.field_name)]
            raise ValueError(f"not JSON ({exc.msg}); write {example}") from None

    @field_validator("webhooks")
    @classmethod
    def _webhook_urls(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, url in value.items():
            if not re.match(r"^[a-z0-9][a-z0-9_-]{0,63}$", name):
                raise ValueError(f"webhook name {name!r}: use a lower-case slug like 'sales-chat'")
            # The URL itself may hold a token (Slack, Teams): never echo it back.
            if not re.match(r"^https?://[^\s/?#]+", url.get_secret_value()):
                raise ValueError(f"webhook {name!r}: the URL must start with https:// or http://")
        return value

    @field_validator("intake_token", "intake_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_INTAKE_SECRET_CHARS:
            raise ValueError(
                f"use at least {MIN_INTAKE_SECRET_CHARS} random characters, e.g. the output of "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("contact_cap")
    @classmethod
    def _contact_cap(cls, value: str | None) -> str | None:
        if value is not None:
            ContactCap.parse(value)
        return value

    @property
    def effective_contact_cap(self) -> ContactCap | None:
        """The parsed ``contact_cap`` (None: no cap)."""
        return ContactCap.parse(self.contact_cap) if self.contact_cap else None

    @model_validator(mode="after")
    def _crm_events_target(self) -> Settings:
        if self.crm_events_url is None:
            return self
        value = self.crm_events_url.get_secret_value().strip()
        is_url = re.match(r"^https?://[^\s/?#]+", value) is not None
        if not is_url and value not in self.webhooks:
            known = ", ".join(sorted(self.webhooks)) or "none"
            # A URL may hold a token: only a value that is not one is shown.
            raise ValueError(
                f"CRM_CRM_EVENTS_URL: {value[:64]!r} is neither an http(s):// URL nor a name in "
                f"CRM_WEBHOOKS (configured: {known})"
            )
        if self.webhook_secret is None:
            raise ValueError(
                "CRM_CRM_EVENTS_URL needs CRM_WEBHOOK_SECRET: the CRM tells our suppression "
                "events from forged ones by their signature"
            )
        return self

    @property
    def crm_events_target(self) -> tuple[str, str] | None:
        """The CRM's event endpoint as (name, URL): a name in CRM_WEBHOOKS, or
        :data:`~worker.constants.CRM_EVENTS_ENDPOINT` for a URL; None when unset."""
        if self.crm_events_url is None:
            return None
        value = self.crm_events_url.get_secret_value().strip()
        if value in self.webhooks:
            return value, self.webhooks[value].get_secret_value()
        return CRM_EVENTS_ENDPOINT, value

    @model_validator(mode="after")
    def _dkim_complete(self) -> Settings:
        if (self.dkim_selector is None) != (self.dkim_private_key_file is None):
            raise ValueError(
                "DKIM needs both CRM_DKIM_SELECTOR and CRM_DKIM_PRIVATE_KEY_FILE (or neither)"
            )
        key = self.dkim_private_key_file
        if key is not None and not key.is_file():
            raise ValueError(f"CRM_DKIM_PRIVATE_KEY_FILE: no file {key}")
        if self.smtp_ca_file is not None and not self.smtp_ca_file.is_file():
            raise ValueError(f"CRM_SMTP_CA_FILE: no file {self.smtp_ca_file}")
        if self.mailbox_ca_file is not None and not self.mailbox_ca_file.is_file():
            raise ValueError(f"CRM_MAILBOX_CA_FILE: no file {self.mailbox_ca_file}")
        return self

    @property
    def effective_unsubscribe_url(self) -> str:
        """HTTPS base of unsubscribe links; the signed token is appended as the last segment."""
        return self.unsubscribe_url or f"https://{self.sender_domain}/unsubscribe"

    @property
    def effective_unsubscribe_mailbox(self) -> str:
        """Bare address that receives ``mailto:`` unsubscribes."""
        if self.unsubscribe_mailto:
            return parseaddr(self.unsubscribe_mailto)[1]
        return f"unsubscribe@{self.sender_domain}"

    @property
    def effective_scheduler_lock_ttl_s(self) -> float:
        """The leader lock's lifetime: as set, yet always past the next pass (a lock that
        expired between two passes would hand the lead back and forth)."""
        least = self.scheduler_interval_s * SCHEDULER_LOCK_INTERVALS
        return max(self.scheduler_lock_ttl_s, least)

    @property
    def effective_outbox_dir(self) -> Path:
        """Folder of ``.eml`` files used when no SMTP host is configured."""
        return self.outbox_dir if self.outbox_dir is not None else self.data_dir / "outbox"

    @property
    def effective_smtp_port(self) -> int:
        """The configured port, else the usual one for the security mode."""
        if self.smtp_port is not None:
            return self.smtp_port
        return {"none": 25, "starttls": 587, "tls": 465}[self.smtp_security]

    @property
    def effective_mailbox_port(self) -> int:
        """IMAP port: ``CRM_MAILBOX_PORT``, else the default of the transport security."""
        if self.mailbox_port is not None:
            return self.mailbox_port
        return 993 if self.mailbox_tls == "tls" else 143

    @property
    def company(self) -> dict[str, str]:
        """What templates see as ``company``."""
        return {
            "name": self.company_name,
            "address": self.company_address,
            "crm_customer_url": self.crm_customer_url or "",
        }

    @property
    def sender_address(self) -> str:
        """The bare address of ``mail_from`` (the envelope sender)."""
        return parseaddr(self.mail_from)[1]

    @property
    def sender_domain(self) -> str:
        """Domain of the sender: the right-hand side of every Message-ID we create."""
        return self.sender_address.rpartition("@")[2]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: the process environment) and ``.env``.

    Raises :class:`~worker.errors.ConfigError` naming every invalid or misspelt ``CRM_`` variable.
    """
    env = dict(os.environ if environ is None else environ)
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    problems = [
        _unknown_variable_message(name, known)
        for name in sorted(env)
        if name.startswith(ENV_PREFIX) and name not in known
    ]
    if problems:
        raise ConfigError(problems)
    values = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name in known and value != ""
    }
    try:
        # The .env file fills in only what the environment leaves unset.
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            [
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                if err["loc"]
                else err["msg"]  # a check across settings names its variables itself
                for err in exc.errors()
            ]
        ) from None


def _unknown_variable_message(name: str, known: set[str]) -> str:
    guess = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {guess[0]}?" if guess else ""
    return f"{name}: unknown setting{hint}"
