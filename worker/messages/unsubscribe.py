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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis

from worker.constants import (
    MAX_UNSUBSCRIBE_TOKEN_CHARS,
    UNSUBSCRIBE_MAC_BYTES,
    UNSUBSCRIBE_SECRET_KEY,
)
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
def _keyed(secret: bytes, version: str = TOKEN_VERSION) -> hmac.HMAC:
    """HMAC-SHA256 under ``secret`` that has read the signed prefix: copied for each token, as
    setting up the key is most of the work of ``hmac.new`` for a message this short."""
    # The version and purpose are part of the signed bytes, so a MAC made for anything else
    # with the same secret can never pass as an unsubscribe token.
    return hmac.new(secret, b"crm-unsubscribe:" + version.encode() + b":", hashlib.sha256)


def _mac(secret: bytes, payload: bytes, version: str = TOKEN_VERSION) -> bytes:
    mac = _keyed(secret, version).copy()
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


# -- the address token (version 2) ------------------------------------------------------------

ADDRESS_TOKEN_VERSION = "2"
#: What an address token may ask to leave: marketing mail, or nothing (a preview test copy).
MARKETING = "marketing"
TOKEN_KINDS = frozenset({MARKETING, PREVIEW_CHANNEL})
_SEPARATOR = "\x1f"  # no address, locale or kind contains a unit separator
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class OptOut:
    """What a genuine unsubscribe token asks: the ``address`` (or, in a token of mail sent
    before addresses were named, the ``customer_id``) leaves mail of ``kind``; ``locale`` is
    the language the recipient reads, for the pages."""

    kind: str
    address: str | None = None
    customer_id: str | None = None
    locale: str | None = None


def sign_address(secret: bytes, address: str, kind: str, locale: str | None = None) -> str:
    """A token saying "``address`` leaves ``kind`` mail" (``2.<payload>.<mac>``): everything
    the unsubscribe endpoint needs, so it needs no lookup in the CRM."""
    if not secret:
        raise ValueError("an unsubscribe secret must not be empty")
    if kind not in TOKEN_KINDS:
        raise ValueError(f"kind {kind!r} cannot go into an unsubscribe token")
    if not address or _SEPARATOR in address or any(c in address for c in "\r\n\0"):
        raise ValueError(f"address {address!r} cannot go into an unsubscribe token")
    shown = locale if locale and _LOCALE.match(locale) else ""
    payload = _SEPARATOR.join((kind, shown, address.strip().lower())).encode()
    mac = _mac(secret, payload, ADDRESS_TOKEN_VERSION)
    return f"{ADDRESS_TOKEN_VERSION}.{_b64(payload)}.{_b64(mac)}"


def _parts(token: str) -> tuple[str, bytes, bytes]:
    version, _, rest = token.strip().partition(".")
    encoded, _, signature = rest.partition(".")
    if version not in (TOKEN_VERSION, ADDRESS_TOKEN_VERSION) or not encoded or not signature:
        raise UnsubscribeTokenError("not a token of this worker")
    try:
        return version, _unb64(encoded), _unb64(signature)
    except (binascii.Error, ValueError):
        raise UnsubscribeTokenError("not valid base64url") from None


def _address_payload(payload: bytes) -> tuple[str, str | None, str]:
    fields = payload.decode("utf-8", "replace").split(_SEPARATOR)
    if len(fields) != 3 or fields[0] not in TOKEN_KINDS or not fields[2]:
        raise UnsubscribeTokenError("malformed contents")
    kind, locale, address = fields
    return kind, (locale if _LOCALE.match(locale) else None), address


def read_token(secrets_: Sequence[bytes], token: str) -> OptOut:
    """The request ``token`` carries, checked against each of ``secrets_`` (the current one
    first, then retired ones, so links in mail signed before a key rotation still work); a
    token of either version. :class:`UnsubscribeTokenError` if it is not genuine."""
    if len(token) > MAX_UNSUBSCRIBE_TOKEN_CHARS:
        raise UnsubscribeTokenError("too long")
    version, payload, given = _parts(token)
    if not any(hmac.compare_digest(given, _mac(s, payload, version)) for s in secrets_ if s):
        raise UnsubscribeTokenError("signature does not match")
    if version == ADDRESS_TOKEN_VERSION:
        kind, locale, address = _address_payload(payload)
        return OptOut(kind, address=address, locale=locale)
    customer_id, _, channel = payload.decode("utf-8", "replace").rpartition(":")
    if not _ID.match(customer_id) or not _CHANNEL.match(channel):
        raise UnsubscribeTokenError("malformed contents")
    return OptOut(
        PREVIEW_CHANNEL if channel == PREVIEW_CHANNEL else MARKETING, customer_id=customer_id
    )


def unverified_locale(token: str) -> str | None:
    """The locale written in a token, genuine or not: only to choose the language of a page
    whose answer is the same for every token (nothing is decided on it)."""
    try:
        version, payload, _ = _parts(token[:MAX_UNSUBSCRIBE_TOKEN_CHARS])
        return _address_payload(payload)[1] if version == ADDRESS_TOKEN_VERSION else None
    except UnsubscribeTokenError:
        return None


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
    #: Retired secrets (``CRM_UNSUBSCRIBE_OLD_SECRETS``): their tokens still verify.
    old_secrets: tuple[bytes, ...] = ()

    def links(
        self, address: str, kind: str = MARKETING, locale: str | None = None
    ) -> UnsubscribeLinks:
        """The links of a message to ``address``: its token names the address, the kind of
        mail it leaves (``preview`` for test copies: leaves nothing) and the reader's locale."""
        token = sign_address(self.secret, address, kind, locale)
        url = f"{self.base_url.rstrip('/')}/{token}"
        # quote("unsubscribe " + token): a token is digits, letters, "-", "_" and ".", which
        # quote() leaves as they are, so only the space needs writing (%20).
        mailto = f"mailto:{self.mailbox}?subject=unsubscribe%20{token}"
        return UnsubscribeLinks(url, mailto)

    def verify(self, token: str) -> OptOut:
        """:func:`read_token` with this worker's secrets, current and retired."""
        return read_token((self.secret, *self.old_secrets), token)


def shared_secret(client: redis.Redis) -> bytes:
    """The secret used when ``CRM_UNSUBSCRIBE_SECRET`` is unset: random, created once and kept
    in Redis, so every process on the same Redis signs and verifies alike."""
    client.set(UNSUBSCRIBE_SECRET_KEY, secrets.token_hex(32), nx=True)
    value = client.get(UNSUBSCRIBE_SECRET_KEY)
    if not isinstance(value, bytes) or not value:
        raise ConfigError(["CRM_UNSUBSCRIBE_SECRET: unset, and Redis keeps none; set one"])
    return value
