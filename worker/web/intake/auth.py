"""Who may post events to the intake: the CRM, proven by a bearer token or an HMAC signature.

``CRM_INTAKE_TOKEN``: the CRM sends ``Authorization: Bearer <token>``. ``CRM_INTAKE_SECRET``:
it signs each request the way the webhook channel signs ours (:func:`sign`) —
``X-CRM-Timestamp: <unix seconds>`` and ``X-CRM-Signature: sha256=<hex>``, the HMAC-SHA256 of
``"<timestamp>." + body`` — and a timestamp further off than
:data:`~worker.constants.INTAKE_SIGNATURE_MAX_AGE` is refused, so a captured request cannot
be replayed later. With both set, either one admits a request. Every comparison is constant-time.

Example::

    >>> auth = IntakeAuth(token=b"0123456789abcdef", secret=None)
    >>> auth.verify({"authorization": "Bearer 0123456789abcdef"}, b"{}", now=0.0)
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from worker.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from worker.constants import INTAKE_SIGNATURE_MAX_AGE
from worker.errors import ConfigError, IntakeError
from worker.settings import Settings

#: Addresses only this machine can reach: the one place an intake may run without credentials.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: Digits of the longest unix time in seconds a signature may carry (until the year 33658).
_TIMESTAMP_DIGITS = 12


def sign(secret: bytes, body: bytes, now: float) -> dict[str, str]:
    """The signature headers of ``body`` sent at unix time ``now`` (for the CRM's side too)."""
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


@dataclass(frozen=True)
class IntakeAuth:
    """The credentials a request must carry; neither set means an open (loopback) intake."""

    token: bytes | None
    secret: bytes | None
    max_age: timedelta = INTAKE_SIGNATURE_MAX_AGE

    @classmethod
    def from_settings(cls, settings: Settings, host: str) -> IntakeAuth:
        """The intake's credentials; :class:`ConfigError` when it would listen on ``host``
        without any (allowed only on a loopback address, with the explicit setting)."""
        token, secret = settings.intake_token, settings.intake_secret
        if token is None and secret is None:
            if not settings.intake_allow_unauthenticated:
                raise ConfigError(
                    [
                        "the event intake needs CRM_INTAKE_TOKEN (bearer token) or "
                        "CRM_INTAKE_SECRET (HMAC signatures); for a local try-out only, "
                        "CRM_INTAKE_ALLOW_UNAUTHENTICATED=true with --host 127.0.0.1"
                    ]
                )
            if host not in LOOPBACK_HOSTS:
                raise ConfigError(
                    [
                        f"CRM_INTAKE_ALLOW_UNAUTHENTICATED: allowed on a loopback address only, "
                        f"not on {host}; set CRM_INTAKE_TOKEN or CRM_INTAKE_SECRET"
                    ]
                )
        return cls(
            token=token.get_secret_value().encode("utf-8") if token else None,
            secret=secret.get_secret_value().encode("utf-8") if secret else None,
        )

    @property
    def open(self) -> bool:
        return self.token is None and self.secret is None

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
        """Return if the request may post; else raise :class:`IntakeError` (401) saying what
        is missing. ``headers`` is looked up in lower case (as Starlette and HTTP/2 give them)."""
        if self.open:
            return
        if self.token is not None:
            scheme, _, given = (headers.get("authorization") or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8"), self.token
            ):
                return
        if self.secret is not None:
            timestamp = headers.get(TIMESTAMP_HEADER.lower())
            given_signature = headers.get(SIGNATURE_HEADER.lower())
            if timestamp and given_signature:
                self._verify_signature(self.secret, timestamp, given_signature, body, now)
                return
        raise IntakeError(401, self._missing())

    def _verify_signature(
        self, secret: bytes, timestamp: str, given: str, body: bytes, now: float
    ) -> None:
        max_age_s = self.max_age.total_seconds()
        # str.isdigit() admits '²' and other Unicode digits int() refuses, and int() of a
        # 400-digit value overflows the float comparison: only a short ASCII number is a time.
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _TIMESTAMP_DIGITS:
            raise IntakeError(401, f"{TIMESTAMP_HEADER} must be unix seconds, e.g. {int(now)}")
        if abs(now - int(timestamp)) > max_age_s:
            raise IntakeError(
                401,
                f"{TIMESTAMP_HEADER} is more than {max_age_s:.0f} s off the intake's clock; sign "
                "each request when it is sent (and keep the clocks in sync)",
            )
        expected = signature(secret, timestamp, body)
        if not hmac.compare_digest(expected.encode("ascii"), given.strip().encode("utf-8")):
            raise IntakeError(
                401,
                f"{SIGNATURE_HEADER} does not match: sign '<timestamp>.' + the exact body bytes "
                "with HMAC-SHA256 under CRM_INTAKE_SECRET, as 'sha256=<hex>'",
            )

    def _missing(self) -> str:
        ways = []
        if self.token is not None:
            ways.append("'Authorization: Bearer <CRM_INTAKE_TOKEN>'")
        if self.secret is not None:
            ways.append(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} (HMAC of the body)")
        return "missing or wrong credentials; send " + " or ".join(ways)
