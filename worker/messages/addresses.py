"""Recipient addresses: validated before anything is queued or sent.

``email.utils.parseaddr`` on Python 3.11.7 silently returns the first address of
``"a@x.com, b@evil.com"`` (CVE-2023-27043), so nothing here relies on it for recipients:
every address goes through email-validator, and anything that is not exactly one address is
refused with a reason.

Most addresses are plain ASCII (``anna.meier@example.com``), and email-validator spends most of
its time on what they cannot contain (quoting, Unicode normalization, IDNA). For those,
:func:`normalize_recipient` takes a shortcut that returns exactly what email-validator returns:
the domain is validated by email-validator itself, once per domain, and the local part is
checked with email-validator's own dot-atom pattern (see :func:`_plain_address`). Anything else
— non-ASCII, a domain email-validator refuses or writes differently — goes through
``validate_email`` in full; ``tests/test_addresses.py`` compares both on generated and hostile
addresses.
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, DOT_ATOM_TEXT

from worker.errors import AddressError

_FORBIDDEN = frozenset('\r\n\0,;<>"')
_HAS_FORBIDDEN = re.compile(r'[\r\n\0,;<>"\x00-\x1f]')
MAX_ADDRESS_CHARS = 254
#: Distinct recipient domains whose validation is remembered (a CRM has a few thousand).
_DOMAIN_CACHE_SIZE = 8192
_ROLE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


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
    if _HAS_FORBIDDEN.search(text):
        bad = sorted({c for c in text if c in _FORBIDDEN or (ord(c) < 32)})
        raise AddressError(text, f"contains {', '.join(repr(c) for c in bad)}: exactly one address")
    return _plain_address(text) or _validated(text)


def _validated(text: str) -> str:
    """``text`` as email-validator normalizes it, or :class:`AddressError` with its reason."""
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AddressError(text, str(exc)) from None
    return f"{result.local_part}@{result.ascii_domain}"


def _plain_address(text: str) -> str | None:
    """What :func:`_validated` returns for an ordinary ASCII address, or ``None`` (then
    ``validate_email`` decides). Why it is the same, step by step through email-validator 2.x:

    * the text is ASCII with exactly one ``@`` and none of ``"<`` (refused before), so
      ``split_email`` splits at that ``@``: no display name, no quoted local part, and NFC
      normalization leaves ASCII unchanged;
    * a local part matching ``DOT_ATOM_TEXT`` is returned as it is, lower-cased when it is one
      of the RFC 2142 role names (``Info`` → ``info``), as ``validate_email`` does;
    * the domain is checked by ``validate_email`` itself (:func:`_plain_domain`); only domains
      whose normalized form has no IDNA label are taken, so the three lengths email-validator
      checks are all the length of ``text`` in lower case, at most 254 (checked before).
    """
    if not text.isascii():
        return None
    local, _, domain = text.partition("@")
    if "@" in domain or DOT_ATOM_TEXT.match(local) is None:
        return None
    ascii_domain = _plain_domain(domain)
    if ascii_domain is None:
        return None
    if local.lower() in _ROLE_MAILBOXES:
        local = local.lower()
    return f"{local}@{ascii_domain}"


@lru_cache(maxsize=_DOMAIN_CACHE_SIZE)
def _plain_domain(domain: str) -> str | None:
    """The normalized form email-validator gives the ASCII ``domain`` when it accepts it and
    writes it without IDNA labels (the same in Unicode and ASCII), else ``None``."""
    try:
        result = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    if result.domain != result.ascii_domain or "xn--" in result.ascii_domain:
        return None
    return result.ascii_domain
