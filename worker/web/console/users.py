"""Console logins: a name, a role and an argon2id password hash, kept in Redis.

``viewer`` sees every page; ``editor`` may also change rule files, send test copies and
retry failed deliveries. Passwords are never stored, only their argon2id hashes (argon2-cffi's
defaults, RFC 9106's second recommended set); a hash made with older parameters is replaced
at the next login.

Example::

    users = ConsoleUsers(client)
    users.add("maria", "a long passphrase", role="editor", email="maria@shop.example")
    user = users.verify("maria", "a long passphrase")   # None when wrong
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from worker.constants import CONSOLE_USERS_KEY, MIN_CONSOLE_PASSWORD_CHARS
from worker.errors import AddressError, ConsoleUserError
from worker.messages.addresses import normalize_recipient

Role = Literal["viewer", "editor"]
ROLES: tuple[Role, ...] = ("viewer", "editor")
#: A login name: letters, digits and ._@- (an e-mail address fits), at most 64 characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")

_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name takes as long as a wrong
    password. Made at the first login, not at import: hashing costs ≈ 0.1 s of CPU, which
    every ``crm-worker`` command would otherwise pay at start."""
    return _HASHER.hash("no such user")


@dataclass(frozen=True)
class ConsoleUser:
    """A console login (without its hash)."""

    name: str
    role: Role
    #: Where "send a test to me" sends; empty when the login has no address.
    email: str = ""

    @property
    def editor(self) -> bool:
        return self.role == "editor"


class ConsoleUsers:
    """The console's logins in Redis (:data:`~worker.constants.CONSOLE_USERS_KEY`)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(self, name: str, password: str, *, role: str = "viewer", email: str = "") -> bool:
        """Add the login, or replace its password, role and address; True when it is new.
        Raises :class:`ConsoleUserError` saying what to change."""
        if not NAME_PATTERN.match(name):
            raise ConsoleUserError(
                f"user name {name!r}: use letters, digits and . _ @ + - (at most 64)"
            )
        if role not in ROLES:
            raise ConsoleUserError(f"role {role!r}: use viewer or editor")
        if len(password) < MIN_CONSOLE_PASSWORD_CHARS:
            raise ConsoleUserError(
                f"the password is shorter than {MIN_CONSOLE_PASSWORD_CHARS} characters"
            )
        if not email and "@" in name:
            email = name
        if email:
            try:
                email = normalize_recipient(email)
            except AddressError as exc:
                raise ConsoleUserError(f"address {email!r}: {exc.reason}") from None
        entry = {"hash": _HASHER.hash(password), "role": role, "email": email}
        return bool(self.client.hset(CONSOLE_USERS_KEY, name, json.dumps(entry)))

    def remove(self, name: str) -> bool:
        """Remove the login (its open sessions end at their next request); False if unknown."""
        return bool(self.client.hdel(CONSOLE_USERS_KEY, name))

    def get(self, name: str) -> ConsoleUser | None:
        entry = self._entry(name)
        return _user(name, entry) if entry is not None else None

    def all(self) -> list[ConsoleUser]:
        raw: dict[Any, Any] = self.client.hgetall(CONSOLE_USERS_KEY)
        users = [_user(_text(name), json.loads(value)) for name, value in raw.items()]
        return sorted(users, key=lambda user: user.name)

    def verify(self, name: str, password: str) -> ConsoleUser | None:
        """The login when ``password`` is its password, else None (also for an unknown name)."""
        entry = self._entry(name) if NAME_PATTERN.match(name) else None
        stored = entry["hash"] if entry is not None else _dummy_hash()
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        if _HASHER.check_needs_rehash(stored):
            entry["hash"] = _HASHER.hash(password)
            self.client.hset(CONSOLE_USERS_KEY, name, json.dumps(entry))
        return _user(name, entry)

    def _entry(self, name: str) -> dict[str, Any] | None:
        raw = self.client.hget(CONSOLE_USERS_KEY, name)
        return json.loads(raw) if raw is not None else None


def _user(name: str, entry: dict[str, Any]) -> ConsoleUser:
    role = entry.get("role")
    return ConsoleUser(name, role if role in ROLES else "viewer", str(entry.get("email") or ""))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
