"""The unsubscribe/bounce mailbox: read it over IMAP, act on each mail, file it away.

One pass (:meth:`FeedbackMailbox.run_pass`) takes every mail in the inbox
(``CRM_MAILBOX_FOLDER``), classifies it (:func:`worker.delivery.feedback.classify`), acts on it
(:class:`FeedbackActions`) and moves it to the folder of its outcome under
``CRM_MAILBOX_FOLDER_PREFIX`` (``crm/bounced``, ``crm/soft-bounce``, ``crm/complaint``,
``crm/unsubscribed``, ``crm/auto-reply``, ``crm/other``), creating the folders when missing.
Nothing is deleted: an operator can read every mail afterwards, and a mail filed wrongly
is moved back to the inbox to be handled again.

A mail is moved only after its action is written, so a pass cut short (Redis or the IMAP
server gone) leaves the rest in the inbox for the next one; acting twice on the same mail
changes nothing (a suppression is replaced by itself, a soft bounce is counted by the
bounce's own Message-ID).

Example::

    >>> mailbox = FeedbackMailbox(settings, actions)                 # doctest: +SKIP
    >>> mailbox.run_pass(now).counts
    Counter({'bounced': 2, 'unsubscribed': 1, 'other': 1})
"""

from __future__ import annotations

import hashlib
import imaplib
import logging
import re
import ssl
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from imap_tools import BaseMailBox, MailBox, MailBoxStartTls, MailBoxUnencrypted
from imap_tools.errors import ImapToolsError

from worker.constants import (
    FEEDBACK_FOLDERS,
    MAILBOX_BATCH,
    MAX_FEEDBACK_MAIL_BYTES,
    SOFT_BOUNCE_KEY_PREFIX,
)
from worker.delivery.feedback import Feedback, classify
from worker.errors import MailboxError, UnsubscribeTokenError
from worker.messages.mail import key_digest
from worker.messages.unsubscribe import MARKETING, Unsubscriber
from worker.records import suppression_events as change
from worker.records.delivery_log import DeliveryLog, LogEntry
from worker.records.suppression import ALL, MARKETING_ONLY, SuppressionList
from worker.settings import Settings

log = logging.getLogger(__name__)

#: The folder (under the prefix) of each outcome; see the module docstring.
UNSUBSCRIBED, BOUNCED, SOFT_BOUNCE, COMPLAINT, AUTO_REPLY, OTHER = FEEDBACK_FOLDERS


@dataclass(frozen=True)
class Handled:
    """What became of one mail: the ``folder`` it was filed in and why (``detail``)."""

    uid: str
    folder: str
    detail: str
    feedback: Feedback


@dataclass
class MailboxPass:
    """One pass over the inbox: how many mails went to each folder, and each mail."""

    counts: Counter[str] = field(default_factory=Counter)
    handled: list[Handled] = field(default_factory=list)


class SoftBounces:
    """Soft bounces per address within a window, in Redis: a sorted set per address."""

    def __init__(self, client: redis.Redis, *, window: timedelta) -> None:
        self.client = client
        self.window = window

    def count(self, address: str, bounce_id: str, *, now: datetime) -> int:
        """Count the bounce ``bounce_id`` of ``address`` at ``now``; the number of its
        bounces within the window, this one included."""
        key = SOFT_BOUNCE_KEY_PREFIX + address.strip().lower()
        pipe = self.client.pipeline()
        pipe.zadd(key, {bounce_id: now.timestamp()})
        pipe.zremrangebyscore(key, "-inf", (now - self.window).timestamp())
        pipe.zcard(key)
        pipe.expire(key, int(self.window.total_seconds()) + 1)
        result: list[Any] = pipe.execute()
        return int(result[2])


@dataclass
class FeedbackActions:
    """What each kind of feedback changes: the suppression list, the soft-bounce count and the
    delivery log (``bounced`` after ``sent``, when the bounce names our mail)."""

    suppression: SuppressionList
    unsubscriber: Unsubscriber
    soft_bounces: SoftBounces
    delivery_log: DeliveryLog
    soft_bounce_limit: int
    #: Message-ID -> ``sent`` log entry, read once per pass (see :meth:`_delivery`).
    _sent: dict[str, LogEntry] | None = None

    def begin_pass(self) -> None:
        """Forget what the delivery log said: mail sent since the last pass may bounce now."""
        self._sent = None

    def act(self, feedback: Feedback, *, now: datetime) -> tuple[str, str]:
        """Act on ``feedback``: the folder to file the mail in, and what was done."""
        if feedback.kind == "unsubscribe":
            return self._unsubscribe(feedback, now)
        if feedback.kind in ("hard-bounce", "complaint", "soft-bounce"):
            # A bounce that names no recipient is still ours when its VERP tag names the delivery.
            sent = self._delivery_of(feedback)
            address = feedback.address or (sent.recipient if sent is not None else None)
            if address:
                return self._bounce(feedback, address, sent, now)
        if feedback.kind == "auto-reply":
            return AUTO_REPLY, feedback.reason
        return OTHER, feedback.reason

    def _unsubscribe(self, feedback: Feedback, now: datetime) -> tuple[str, str]:
        try:
            opt_out = self.unsubscriber.verify(feedback.token or "")
        except UnsubscribeTokenError as exc:
            return OTHER, f"unsubscribe with a forged or mangled token: {exc}"
        if opt_out.kind != MARKETING:
            return OTHER, "unsubscribe from a test copy: nobody is unsubscribed"
        # A token of mail sent before tokens named the address names the customer only; the
        # request then comes from the customer's own mailbox, whose address is suppressed.
        address = opt_out.address or feedback.address
        if not address:
            return OTHER, "unsubscribe with a genuine token but no address"
        self.suppression.add(
            address, "unsubscribed by mail", now=now, scope=MARKETING_ONLY,
            event=change.UNSUBSCRIBED, source=change.MAILBOX,
        )  # fmt: skip
        return UNSUBSCRIBED, f"{address} unsubscribed from marketing mail"

    def _bounce(
        self, feedback: Feedback, address: str, sent: LogEntry | None, now: datetime
    ) -> tuple[str, str]:
        key = sent.key if sent is not None else ""
        if feedback.kind == "soft-bounce":
            bounce_id = feedback.message_id or _fingerprint(feedback)
            count = self.soft_bounces.count(address, bounce_id, now=now)
            if count < self.soft_bounce_limit:
                self._log_bounce(sent, feedback, now)
                return SOFT_BOUNCE, f"{address}: soft bounce {count} of {self.soft_bounce_limit}"
            reason = f"{count} soft bounces, the last: {feedback.reason}"
            folder = SOFT_BOUNCE
        elif feedback.kind == "complaint":
            reason, folder = feedback.reason, COMPLAINT
        else:
            reason, folder = f"bounce: {feedback.reason}", BOUNCED
        event = change.COMPLAINED if feedback.kind == "complaint" else change.BOUNCED
        self.suppression.add(
            address, reason, now=now, key=key, scope=ALL, event=event, source=change.MAILBOX
        )
        self._log_bounce(sent, feedback, now)
        return folder, f"{address} suppressed: {reason}"

    def _log_bounce(self, sent: LogEntry | None, feedback: Feedback, now: datetime) -> None:
        if sent is None or feedback.kind == "complaint":
            return  # a complaint means the mail arrived: it did not bounce
        self.delivery_log.record(
            LogEntry(
                at=now,
                status="bounced",
                rule=sent.rule,
                key=sent.key,
                channel=sent.channel,
                recipient=sent.recipient,
                reason=f"{feedback.kind}: {feedback.reason}",
            )
        )

    def _delivery_of(self, feedback: Feedback) -> LogEntry | None:
        """The ``sent`` entry of the delivery ``feedback`` is about: by the Message-ID it quotes,
        else by its VERP tag. Both are the digest of the delivery key, so the log is read once
        per pass to invert it."""
        digests = [
            _digest(feedback.original_message_id) if feedback.original_message_id else None,
            feedback.verp,
        ]
        wanted = [digest for digest in digests if digest]
        if not wanted:
            return None
        if self._sent is None:
            self._sent = {
                key_digest(entry.key): entry
                for entry in self.delivery_log.read()
                if entry.status == "sent"
            }
        return next((self._sent[d] for d in wanted if d in self._sent), None)


def _digest(message_id: str) -> str:
    """The part of our Message-ID that comes from the delivery key: the domain after it is
    left out, so mail sent before CRM_MAIL_FROM moved to another domain is still found."""
    return message_id.strip("<>").rpartition("@")[0].lower()


def _fingerprint(feedback: Feedback) -> str:
    return hashlib.sha256(repr(feedback).encode()).hexdigest()[:32]


class FeedbackMailbox:
    """The IMAP side: connect, take each mail of the inbox, act, move."""

    def __init__(
        self, settings: Settings, actions: FeedbackActions, *, batch: int = MAILBOX_BATCH
    ) -> None:
        self.settings = settings
        self.actions = actions
        self.batch = batch

    def run_pass(self, now: datetime) -> MailboxPass:
        """Handle every mail in the inbox (at most ``batch``); see the module docstring."""
        result = MailboxPass()
        self.actions.begin_pass()
        with self._session() as box:
            folders = self._folders(box)
            box.folder.set(self.settings.mailbox_folder)
            for uid in box.uids("ALL")[: self.batch]:
                raw = self._fetch(box, uid)
                feedback = classify(raw) if raw is not None else _too_large()
                folder, detail = self.actions.act(feedback, now=now)
                box.move(uid, folders[folder])
                log.info("mailbox: %s -> %s: %s", uid, folder, detail)
                result.counts[folder] += 1
                result.handled.append(Handled(uid, folder, detail, feedback))
        return result

    @contextmanager
    def _session(self) -> Iterator[BaseMailBox]:
        s = self.settings
        host = f"{s.mailbox_host}:{s.effective_mailbox_port}"
        if not s.mailbox_host:
            raise MailboxError("(unset)", "CRM_MAILBOX_HOST is not set")
        try:
            box = _connect(s)
            password = s.mailbox_password.get_secret_value() if s.mailbox_password else ""
            box.login(s.mailbox_user or "", password, initial_folder=None)
        except (ImapToolsError, imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(host, _problem(exc)) from None
        try:
            yield box
        except (ImapToolsError, imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(host, f"{type(exc).__name__}: {exc}") from None
        finally:
            # The server may be gone already: then there is nothing left to close.
            with suppress(ImapToolsError, imaplib.IMAP4.error, OSError):
                box.logout()

    def _folders(self, box: BaseMailBox) -> dict[str, str]:
        """The full name of each outcome's folder, created when missing, in the server's
        own hierarchy delimiter (``/`` on most, ``.`` on Maildir++ layouts)."""
        listed = box.folder.list(search_args=self.settings.mailbox_folder)
        delimiter = listed[0].delim if listed and listed[0].delim else "/"
        names = {}
        for name in FEEDBACK_FOLDERS:
            full = f"{self.settings.mailbox_folder_prefix}{delimiter}{name}"
            if not box.folder.exists(full):
                box.folder.create(full)
            names[name] = full
        return names

    def _fetch(self, box: BaseMailBox, uid: str) -> bytes | None:
        """The bytes of mail ``uid``, or ``None`` when it is too large to download. PEEK: a
        mail read by the worker still looks unread to a person opening the folder."""
        status, data = box.client.uid("FETCH", uid, "(RFC822.SIZE)")
        size = re.search(rb"RFC822\.SIZE (\d+)", b" ".join(_flat(data)))
        if status == "OK" and size and int(size.group(1)) > MAX_FEEDBACK_MAIL_BYTES:
            return None
        status, data = box.client.uid("FETCH", uid, "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return b""


def _flat(data: list[Any]) -> Iterator[bytes]:
    for item in data:
        if isinstance(item, bytes):
            yield item
        elif isinstance(item, tuple):
            yield from (part for part in item if isinstance(part, bytes))


def _too_large() -> Feedback:
    return Feedback("other", f"too large to read (over {MAX_FEEDBACK_MAIL_BYTES} bytes)")


def _connect(s: Settings) -> BaseMailBox:
    host, port, timeout = s.mailbox_host or "", s.effective_mailbox_port, s.mailbox_timeout_s
    if s.mailbox_tls == "none":
        return MailBoxUnencrypted(host, port, timeout=timeout)
    # The certificate and the host name are checked, against CRM_MAILBOX_CA_FILE if set.
    ca = str(s.mailbox_ca_file) if s.mailbox_ca_file is not None else None
    context = ssl.create_default_context(cafile=ca)
    if s.mailbox_tls == "tls":
        return MailBox(host, port, timeout=timeout, ssl_context=context)
    return MailBoxStartTls(host, port, timeout=timeout, ssl_context=context)


def _problem(exc: Exception) -> str:
    """What went wrong talking to the mailbox, and what to do about a certificate."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        text += (
            "; the server's certificate is not trusted: set CRM_MAILBOX_CA_FILE to the CA "
            "(PEM) that signed it, or use the host name the certificate names"
        )
    return text


def feedback_mailbox(
    settings: Settings,
    *,
    client: redis.Redis,
    suppression: SuppressionList,
    unsubscriber: Unsubscriber,
    delivery_log: DeliveryLog,
) -> FeedbackMailbox:
    """The mailbox of ``settings`` acting on the worker's Redis."""
    actions = FeedbackActions(
        suppression=suppression,
        unsubscriber=unsubscriber,
        soft_bounces=SoftBounces(client, window=timedelta(days=settings.mailbox_soft_bounce_days)),
        delivery_log=delivery_log,
        soft_bounce_limit=settings.mailbox_soft_bounce_limit,
    )
    return FeedbackMailbox(settings, actions)
