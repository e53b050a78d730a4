"""Every error the worker raises on purpose, under one root.

::

    CrmWorkerError
    ├── ConfigError            settings are invalid (lists each bad CRM_ variable)
    ├── RuleError              rule files are invalid (carries Problems: path:line:col: message)
    ├── TemplateError          a template is missing, does not compile, or fails to render
    │   └── RenderLimitError   render deadline or output size exceeded
    ├── SourceError            the CRM data cannot be read at all (a bad row is not an error)
    │   └── SourceUnavailableError  the CRM database is unreachable now: retry later
    ├── AddressError           a recipient address is unusable (also a ValueError)
    ├── UnsubscribeTokenError  an unsubscribe link was forged or mangled (also a ValueError)
    ├── PreviewError           `crm-worker preview` names a rule or customer that does not exist
    ├── EventError             a reported CRM event is unusable (also a ValueError)
    ├── IntakeError            an event posted over HTTP is refused (carries status and field)
    ├── EmbeddedRedisError     the embedded redis-server (CRM_REDIS_URL unset) did not start
    ├── MailboxError           the feedback mailbox (IMAP) cannot be reached or read
    ├── LeadershipLostError    the scheduler's lock went to another scheduler during a pass
    ├── ConsoleUserError       a console login cannot be added (bad name, role or password)
    └── DeliveryError          a channel could not deliver
        ├── TransientDeliveryError   try again later (4xx, HTTP 429/5xx, connection lost, timeout)
        │   ├── SenderRejectedError  our own policy/auth problem (5.7.x, 535): pause sending
        │   └── RelayUnavailableError    relay unreachable (refused, TLS, 421 greeting): hold off
        ├── PermanentDeliveryError   do not retry (5xx for this message)
        │   ├── RecipientRejectedError   the address itself is bad (5.1.x, 5.2.1): suppress it
        │   └── Utf8UnsupportedError     a non-ASCII local part, and the relay lacks SMTPUTF8
        └── UncertainDeliveryError   connection lost after the message was handed over: unknown

Each carries the fields a caller needs to act on it and a message that says what to do next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


class CrmWorkerError(Exception):
    """Root of every error raised on purpose by the worker."""


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about a file a person edits, printed as ``path:line:col: message``.

    ``line`` and ``col`` are 1-based; 0 means "the whole file".
    """

    path: Path
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def excerpt(self, text: str) -> list[str]:
        """The problem's line of ``text`` (the file's content) with a caret under its column,
        for people who do not count lines and columns; empty for the whole file."""
        lines = text.removeprefix("\ufeff").splitlines()
        if not 0 < self.line <= len(lines):
            return []
        shown = lines[self.line - 1]
        # Copy tabs from the line itself so that the caret stands under the same character.
        before = "".join(c if c == "\t" else " " for c in shown[: max(self.col - 1, 0)])
        number = str(self.line)
        return [f"  {number} | {shown}", f"  {' ' * len(number)} | {before}^"]


class ConfigError(CrmWorkerError):
    """Invalid settings; ``problems`` has one line per bad variable."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings:\n  " + "\n  ".join(self.problems))


class RuleError(CrmWorkerError):
    """A rule file (or several) is invalid; ``problems`` says where and what to write instead."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class TemplateError(CrmWorkerError):
    """A template cannot be used for this message; nothing is sent half-rendered."""

    def __init__(self, template: str, reason: str, *, line: int = 0) -> None:
        self.template = template
        self.reason = reason
        self.line = line
        super().__init__(f"template {template}: {reason}")


class RenderLimitError(TemplateError):
    """Rendering ran past its deadline or produced more output than allowed."""


class SourceError(CrmWorkerError):
    """The CRM data source is unreachable or unusable as a whole."""


class SourceUnavailableError(SourceError):
    """The CRM database cannot be reached right now (refused, timed out, connection lost).

    Transient: a scheduler pass logs it and runs again next interval; a delivery is retried
    with backoff. The message names the database with its password masked.
    """


class AddressError(CrmWorkerError, ValueError):
    """A recipient address is unusable; ``address`` is what was given (repr-safe)."""

    def __init__(self, address: object, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"invalid recipient {address!r}: {reason}")


class UnsubscribeTokenError(CrmWorkerError, ValueError):
    """An unsubscribe token is not genuine (forged, truncated, signed with another secret)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid unsubscribe token: {reason}")


class PreviewError(CrmWorkerError):
    """A preview cannot be built: the rule or the customer does not exist."""


class EventError(CrmWorkerError, ValueError):
    """A CRM event cannot be recorded; the message names the bad part and the expected form."""


class IntakeError(CrmWorkerError):
    """The event intake refuses a request, or refused ``crm-worker event --post``.

    ``status`` is the HTTP status (``None``: no answer at all), ``field`` the part of the event
    at fault when there is one (``record_id``, ``data.via``).
    """

    def __init__(self, status: int | None, reason: str, *, field: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.field = field
        super().__init__(reason)


class DeliveryError(CrmWorkerError):
    """A channel could not deliver a message.

    ``code`` is the SMTP reply code (or HTTP status) when there was one, ``reply`` its text.
    """

    def __init__(self, reason: str, *, code: int | None = None, reply: str = "") -> None:
        self.reason = reason
        self.code = code
        self.reply = reply
        super().__init__(reason if code is None else f"{reason} ({code} {reply})".rstrip())


class TransientDeliveryError(DeliveryError):
    """Delivery may succeed later: retry with backoff, or after ``retry_after`` when the
    server said when (HTTP ``Retry-After``)."""

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        reply: str = "",
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(reason, code=code, reply=reply)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Delivery will not succeed for this recipient: do not retry."""


class SenderRejectedError(TransientDeliveryError):
    """The server refuses *us* (authentication, policy, reputation: 5.7.x, 530, 535).

    Never the recipient's fault: the address is not suppressed; sending pauses for everyone
    and an operator is alerted, instead of burning every message's retries.
    """


class RecipientRejectedError(PermanentDeliveryError):
    """The recipient address does not exist or is disabled (5.1.x, 5.2.1): never send to it
    again; it goes to the suppression list."""


class Utf8UnsupportedError(PermanentDeliveryError):
    """An address of the message has a non-ASCII local part (``jürgen@…``), which travels only
    under SMTPUTF8 (RFC 6531), and the relay does not offer it: ``address`` is that envelope
    address, or "" for one in the header (From, To, Reply-To). The address is not at fault and
    is not suppressed; no 7-bit form exists, so this relay can never carry the message."""

    def __init__(self, address: str = "") -> None:
        which = f"the non-ASCII address {address!r}" if address else "a non-ASCII header address"
        super().__init__(
            f"the SMTP relay does not offer SMTPUTF8, which {which} needs; "
            "use a relay that offers it (Postfix: smtputf8_enable = yes)"
        )
        self.address = address


class UncertainDeliveryError(DeliveryError):
    """The connection was lost after the message was handed to the server, so it may have been
    delivered: recorded as ``unknown``, not resent automatically (``crm-worker retry-failed``
    resends on an operator's request)."""


class RelayUnavailableError(TransientDeliveryError):
    """No session with the relay could be opened (connection refused, TLS failure, timeout, 421
    at the greeting): nothing was handed over, so the message is not to blame. Every worker
    holds off briefly and the attempt does not count; the rule's grace still ends the wait."""


class EmbeddedRedisError(CrmWorkerError):
    """The embedded redis-server for ``data_file`` did not start (``reason``)."""

    def __init__(self, data_file: Path, reason: str) -> None:
        self.data_file = data_file
        self.reason = reason
        super().__init__(
            f"the embedded Redis for {data_file} did not start: {reason}; check that "
            "CRM_DATA_DIR is writable, or set CRM_REDIS_URL to a running Redis"
        )


class LeadershipLostError(CrmWorkerError):
    """Another scheduler holds the leader lock now (this one stalled past the lock's TTL):
    the pass abandons what it planned, the other scheduler's plan stands."""


class MailboxError(CrmWorkerError):
    """The unsubscribe/bounce mailbox at ``host`` cannot be used (``reason``: connection,
    login, folder); mails not yet handled stay in the inbox for the next pass."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(
            f"the feedback mailbox at {host} cannot be read: {reason}; check CRM_MAILBOX_HOST, "
            "CRM_MAILBOX_PORT, CRM_MAILBOX_TLS, CRM_MAILBOX_USER and CRM_MAILBOX_PASSWORD"
        )


class ConsoleUserError(CrmWorkerError, ValueError):
    """A console login cannot be added or removed as asked; the message says what to change."""
