"""HTTP webhooks: chat tools (Slack, Teams, Mattermost), SMS gateways, anything that takes a POST.

Endpoints are named in settings (``CRM_WEBHOOKS='{"sales-chat": "https://hooks…"}'``) so the URLs,
which often embed a token, stay out of rule files, logs and errors (only the name and host are
ever shown). Each request carries:

* ``Idempotency-Key: <delivery key>`` — the same on every retry of one delivery, so a receiver
  that saw a request whose answer was lost (timeout) can drop the repeat;
* with ``CRM_WEBHOOK_SECRET`` set, ``X-CRM-Timestamp: <unix seconds>`` and
  ``X-CRM-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>." + body`` under the
  secret. A receiver recomputes it, compares in constant time and rejects old timestamps.

Answers: 2xx is delivered; 408, 429 and 5xx are transient (``Retry-After`` in seconds or as an
HTTP date is honoured, up to :data:`~worker.constants.WEBHOOK_MAX_RETRY_AFTER`); timeouts and
connection errors are transient; any other status (4xx, an unexpected redirect) is permanent.
Retries themselves are the ledger's (:mod:`worker.delivery.outcome`): one attempt per call here.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from worker.channels.base import Outgoing, Receipt
from worker.constants import WEBHOOK_MAX_REPLY_CHARS, WEBHOOK_MAX_RETRY_AFTER
from worker.errors import PermanentDeliveryError, TransientDeliveryError
from worker.settings import Settings

if TYPE_CHECKING:
    import httpx

USER_AGENT = "crm-worker"
IDEMPOTENCY_HEADER = "Idempotency-Key"
TIMESTAMP_HEADER = "X-CRM-Timestamp"
SIGNATURE_HEADER = "X-CRM-Signature"
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-CRM-Signature`` value of ``body`` sent at ``timestamp`` (for receivers too)."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class WebhookChannel:
    """Posts messages to named webhook endpoints over one pooled HTTP client (httpx documents
    ``Client`` as shareable between threads: all worker threads use this one)."""

    def __init__(
        self,
        endpoints: Mapping[str, str],
        *,
        secret: bytes | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.secret = secret
        self.timeout_s = timeout_s
        # Made at the first message: a deployment without webhooks never imports httpx.
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._closed = False

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._closed:  # as httpx says of a closed client: no new one behind close()
                raise RuntimeError("the webhook channel is closed")
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
            return self._client

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookChannel:
        """The endpoints ``CRM_WEBHOOKS`` names, signed with ``CRM_WEBHOOK_SECRET`` if set."""
        secret = settings.webhook_secret
        return cls(
            {name: url.get_secret_value() for name, url in settings.webhooks.items()},
            secret=secret.get_secret_value().encode("utf-8") if secret else None,
            timeout_s=settings.webhook_timeout_s,
        )

    def send(self, message: Outgoing) -> Receipt:
        import httpx

        name = message.endpoint
        url = self.endpoints.get(name)
        if url is None:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise PermanentDeliveryError(
                f"no webhook named {name!r} in CRM_WEBHOOKS (configured: {known})"
            )
        where = f"webhook {name} ({httpx.URL(url).host})"
        headers = {"Content-Type": message.content_type, IDEMPOTENCY_HEADER: message.key}
        if self.secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self.secret, timestamp, message.data)
        try:
            response = self._http().post(url, content=message.data, headers=headers)
        except httpx.TimeoutException:
            # The receiver may have got it: the retry carries the same Idempotency-Key.
            raise TransientDeliveryError(f"{where}: no answer within {self.timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"{where}: {type(exc).__name__}") from None
        status = response.status_code
        if 200 <= status < 300:
            return Receipt(f"{status} from {where}")
        reply = " ".join(response.text.split())[:WEBHOOK_MAX_REPLY_CHARS]
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientDeliveryError(
                f"{where} answered {status}",
                code=status,
                reply=reply,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )
        if 300 <= status < 400:
            raise PermanentDeliveryError(
                f"{where} redirects ({status}); put the final URL in CRM_WEBHOOKS",
                code=status,
            )
        raise PermanentDeliveryError(f"{where} refused the message", code=status, reply=reply)

    def close(self) -> None:
        with self._client_lock:
            self._closed = True
            if self._client is not None:
                self._client.close()


def retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as a wait, capped; ``None`` if absent
    or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        wait = timedelta(seconds=int(text))
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        wait = when - (now or datetime.now(UTC))
    return max(timedelta(0), min(wait, WEBHOOK_MAX_RETRY_AFTER))
