"""Signed unsubscribe tokens and the links built from them (footer link, ``List-Unsubscribe``).

A token carries the customer id and the channel the customer leaves, signed with HMAC-SHA256
under a secret only the worker knows, so nobody can unsubscribe someone else by editing a link.
Tokens do not expire: a link in a two-year-old mail must still work.

Format: ``1.<base64url(customer_id ":" channel)>.<base64url(first 16 bytes of the HMAC)>`` –
URL-safe, no padding, about 40 characters, so it fits in a path segment and a mailto subject.

The HTTP endpoint that receives one-click unsubscribes (a later issue) calls :func:`verify` and
hands the result to the suppression list::

    >>> secret = b"s3cret"
    >>> token = sign(secret, "42", "email")
    >>> verify(secret, token)
    UnsubscribeRequest(customer_id='42', channel='email')
    >>> verify(b"other secret", token)
    Traceback (most recent call last):
    ...
    worker.errors.UnsubscribeTokenError: invalid unsubscribe token: signature does not match

Test copies sent by ``crm-worker preview --send-to`` carry the channel ``preview``: clicking
their link must not unsubscribe the real customer from a real channel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache

import redis

from worker.constants import UNSUBSCRIBE_MAC_BYTES, UNSUBSCRIBE_SECRET_KEY
from worker.errors import ConfigError, UnsubscribeTokenError

TOKEN_VERSION = "1"
#: The channel named in tokens of preview test copies (see module docstring).
PREVIEW_CHANNEL = "preview"
_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class UnsubscribeRequest:
    """What a valid token says: this customer no longer wants messages on this channel."""

    customer_id: str
    channel: str


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Where a recipient unsubscribes: an HTTPS link (one-click POST or a browser) and a mailto."""

    url: str
    mailto: str

    def header(self) -> str:
        """The ``List-Unsubscribe`` value (RFC 2369): HTTPS first, mailto as the fallback."""
        return f"<{self.url}>, <{self.mailto}>"

    def as_context(self) -> dict[str, str]:
        """What templates see as ``unsubscribe`` (``unsubscribe.url`` in footers)."""
        return {"url": self.url, "mailto": self.mailto}


#: What templates see when the recipient is not a customer (an alert to an account manager).
NO_LINKS_CONTEXT = {"url": "", "mailto": ""}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=16)
def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 under ``secret`` that has read the signed prefix: copied for each token, as
    setting up the key is most of the work of ``hmac.new`` for a message this short."""
    # The version and purpose are part of the signed bytes, so a MAC made for anything else
    # with the same secret can never pass as an unsubscribe token.
    return hmac.new(secret, b"crm-unsubscribe:" + TOKEN_VERSION.encode() + b":", hashlib.sha256)


def _mac(secret: bytes, payload: bytes) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(payload)
    return mac.digest()[:UNSUBSCRIBE_MAC_BYTES]


def sign(secret: bytes, customer_id: str, channel: str) -> str:
    """A token saying "``customer_id`` unsubscribes from ``channel``"."""
    if not secret:
        raise ValueError("an unsubscribe secret must not be empty")
    if not _ID.match(customer_id):
        raise ValueError(f"customer id {customer_id!r} cannot go into an unsubscribe token")
    if not _CHANNEL.match(channel):
        raise ValueError(f"channel {channel!r} cannot go into an unsubscribe token")
    payload = f"{customer_id}:{channel}".encode()
    return f"{TOKEN_VERSION}.{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str) -> UnsubscribeRequest:
    """The request a token carries, or :class:`UnsubscribeTokenError` if it is not genuine."""
    version, _, rest = token.strip().partition(".")
    encoded, _, signature = rest.partition(".")
    if version != TOKEN_VERSION or not encoded or not signature:
        raise UnsubscribeTokenError("not a token of this worker")
    try:
        payload = _unb64(encoded)
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        raise UnsubscribeTokenError("not valid base64url") from None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise UnsubscribeTokenError("signature does not match")
    customer_id, _, channel = payload.decode("utf-8", "replace").rpartition(":")
    if not _ID.match(customer_id) or not _CHANNEL.match(channel):
        raise UnsubscribeTokenError("malformed contents")
    return UnsubscribeRequest(customer_id, channel)


@dataclass(frozen=True)
class Unsubscriber:
    """Builds the links of one recipient. ``base_url`` is HTTPS; the token is its last segment.

    >>> u = Unsubscriber(b"k", "https://shop.example.com/unsubscribe", "leave@shop.example.com")
    >>> links = u.links("42", "email")
    >>> links.url.startswith("https://shop.example.com/unsubscribe/1.")
    True
    >>> links.mailto.startswith("mailto:leave@shop.example.com?subject=unsubscribe%201.")
    True
    """

    secret: bytes
    base_url: str
    mailbox: str

    def links(self, customer_id: str, channel: str) -> UnsubscribeLinks:
        token = sign(self.secret, customer_id, channel)
        url = f"{self.base_url.rstrip('/')}/{token}"
        # quote("unsubscribe " + token): a token is digits, letters, "-", "_" and ".", which
        # quote() leaves as they are, so only the space needs writing (%20).
        mailto = f"mailto:{self.mailbox}?subject=unsubscribe%20{token}"
        return UnsubscribeLinks(url, mailto)

    def verify(self, token: str) -> UnsubscribeRequest:
        """:func:`verify` with this worker's secret."""
        return verify(self.secret, token)


def shared_secret(client: redis.Redis) -> bytes:
    """The secret used when ``CRM_UNSUBSCRIBE_SECRET`` is unset: random, created once and kept
    in Redis, so every process on the same Redis signs and verifies alike."""
    client.set(UNSUBSCRIBE_SECRET_KEY, secrets.token_hex(32), nx=True)
    value = client.get(UNSUBSCRIBE_SECRET_KEY)
    if not isinstance(value, bytes) or not value:
        raise ConfigError(["CRM_UNSUBSCRIBE_SECRET: unset, and Redis keeps none; set one"])
    return value
