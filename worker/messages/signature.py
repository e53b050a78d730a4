"""DKIM signatures (dkimpy), added to every mail when a key is configured.

The signature covers the headers receivers judge a bulk sender by – including *both*
unsubscribe headers: RFC 8058 requires ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` to be
signed, and dkimpy 1.1.8 leaves ``List-Unsubscribe-Post`` out unless it is named. A header in
the list that a message lacks is signed as absent, so nobody can add it on the way.

Setup: ``CRM_DKIM_SELECTOR=crm2026`` and ``CRM_DKIM_PRIVATE_KEY_FILE=/run/secrets/dkim.pem``
(RSA, PEM); publish the public key as a TXT record ``crm2026._domainkey.<domain>``::

    openssl genrsa -out dkim.pem 2048
    openssl rsa -in dkim.pem -pubout -outform DER | base64 -w0   # → "v=DKIM1; k=rsa; p=…"
"""

from __future__ import annotations

from worker.errors import ConfigError
from worker.settings import Settings

#: Headers covered by the signature (see module docstring).
SIGNED_HEADERS = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Reply-To",
    b"Auto-Submitted",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"List-Id",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Language",
)


class DkimSigner:
    """Prepends a ``DKIM-Signature`` header to composed messages (the bytes of :mod:`mail`)."""

    def __init__(self, *, selector: str, domain: str, private_key: bytes) -> None:
        # dkimpy (and dnspython under it, ≈ 0.05 s to import) loads only where a key is set.
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        try:
            parse_pem_private_key(private_key)
        except (UnparsableKeyError, ValueError, IndexError) as exc:
            raise ConfigError(
                [f"CRM_DKIM_PRIVATE_KEY_FILE: not an RSA private key in PEM format ({exc})"]
            ) from None
        self.selector = selector
        self.domain = domain
        self._key = private_key

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """A signer when ``CRM_DKIM_SELECTOR`` and the key file are set, else ``None``."""
        if settings.dkim_selector is None or settings.dkim_private_key_file is None:
            return None
        return cls(
            selector=settings.dkim_selector,
            domain=settings.dkim_domain or settings.sender_domain,
            private_key=settings.dkim_private_key_file.read_bytes(),
        )

    def sign(self, data: bytes) -> bytes:
        """``data`` with its signature header in front (relaxed/relaxed canonicalization, which
        survives relays that re-wrap whitespace)."""
        import dkim

        header = dkim.sign(
            data,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
            linesep=b"\r\n",
        )
        return bytes(header) + data
