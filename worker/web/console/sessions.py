"""Console sessions and CSRF tokens.

A login opens a session: a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie (also
``Secure`` with ``CRM_CONSOLE_HTTPS``), and in Redis under the token's SHA-256 (someone who can
read Redis cannot take over a session) the user name and a CSRF token that every form of the
session carries. A session ends after :data:`~worker.constants.CONSOLE_SESSION_TTL`, at
logout, or when its login is removed.

The login form comes before any session: it carries a token that must equal a cookie set with
the form (double submit), so another site cannot log a browser in under its own account.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis

from worker.constants import CONSOLE_SESSION_KEY_PREFIX, CONSOLE_SESSION_TTL

#: The session cookie, and the login form's CSRF cookie.
SESSION_COOKIE = "crm_console"
LOGIN_COOKIE = "crm_console_login"
#: The form field every POST carries.
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    """An open session: whose, and the CSRF token its forms carry."""

    token: str
    user: str
    csrf: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    """Do two tokens match (in constant time; a missing one never matches)?"""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Open, look up and close console sessions in Redis."""

    def __init__(self, client: redis.Redis, *, ttl: timedelta = CONSOLE_SESSION_TTL) -> None:
        self.client = client
        self.ttl = ttl

    @staticmethod
    def _key(token: str) -> str:
        return CONSOLE_SESSION_KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()

    def open(self, user: str) -> Session:
        session = Session(new_token(), user, new_token())
        key = self._key(session.token)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping={"user": user, "csrf": session.csrf})
            pipe.expire(key, self.ttl)
            pipe.execute()
        return session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        raw: dict[Any, Any] = self.client.hgetall(self._key(token))
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if "user" not in fields or "csrf" not in fields:
            return None
        return Session(token, fields["user"], fields["csrf"])

    def close(self, token: str) -> None:
        self.client.delete(self._key(token))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
