"""Recipient addresses: validated before anything is queued or sent.

``email.utils.parseaddr`` on Python 3.11.7 silently returns the first address of
``"a@x.com, b@evil.com"`` (CVE-2023-27043), so nothing here relies on it for recipients:
every address goes through email-validator, and anything that is not exactly one address is
refused with a reason.
"""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from worker.errors import AddressError

_FORBIDDEN = frozenset('\r\n\0,;<>"')
MAX_ADDRESS_CHARS = 254


@lru_cache(maxsize=4096)
def normalize_recipient(value: object) -> str:
    """One deliverable address in the form to put on the wire, or :class:`AddressError`.

    International domains come back in their ASCII (IDNA, ``xn--``) form, which every relay
    accepts; a non-ASCII local part is kept and needs SMTPUTF8 on the relay.

    >>> normalize_recipient("Jürgen@Müller.de")
    'Jürgen@xn--mller-kva.de'
    """
    if not isinstance(value, str) or not value.strip():
        raise AddressError(value, "no address")
    text = value.strip()
    if len(text) > MAX_ADDRESS_CHARS:
        raise AddressError(text[:60] + "…", f"longer than {MAX_ADDRESS_CHARS} characters")
    bad = sorted({c for c in text if c in _FORBIDDEN or (ord(c) < 32)})
    if bad:
        raise AddressError(text, f"contains {', '.join(repr(c) for c in bad)}: exactly one address")
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AddressError(text, str(exc)) from None
    return f"{result.local_part}@{result.ascii_domain}"
