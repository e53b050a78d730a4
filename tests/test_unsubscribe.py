"""Unsubscribe tokens: carry customer and channel, cannot be forged or edited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import string
from urllib.parse import quote

import pytest

from worker.errors import UnsubscribeTokenError
from worker.messages.unsubscribe import (
    OptOut,
    Unsubscriber,
    UnsubscribeRequest,
    read_token,
    sign,
    sign_address,
    unverified_locale,
    verify,
)

SECRET = b"0123456789abcdef"


def test_round_trip_carries_customer_and_channel():
    token = sign(SECRET, "cust-42@crm", "email")
    assert verify(SECRET, token) == UnsubscribeRequest("cust-42@crm", "email")
    assert len(token) < 80 and token.isascii()
    assert all(c.isalnum() or c in "._-" for c in token)


def other_customer(token: str) -> str:
    # The payload of "42:email" re-encoded for customer 43, keeping the old signature.
    version, _, signature = token.split(".")
    forged = sign(b"attacker's own key", "43", "email").split(".")[1]
    return f"{version}.{forged}.{signature}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2],
        lambda t: t + "A",
        lambda t: t.replace("1.", "2.", 1),
        lambda t: "",
        lambda t: "garbage",
        lambda t: "1.!!!.???",
        other_customer,
    ],
)
def test_edited_or_forged_tokens_are_refused(mangle):
    token = sign(SECRET, "42", "email")
    with pytest.raises(UnsubscribeTokenError):
        verify(SECRET, mangle(token))


def test_a_token_from_another_secret_is_refused():
    with pytest.raises(UnsubscribeTokenError, match="signature does not match"):
        verify(SECRET, sign(b"another secret", "42", "email"))


@pytest.mark.parametrize(("customer", "channel"), [("4:2", "email"), ("42", "E mail"), ("", "x")])
def test_values_that_cannot_be_signed_are_refused(customer, channel):
    with pytest.raises(ValueError):
        sign(SECRET, customer, channel)


def test_without_a_configured_secret_all_processes_share_one_through_redis(
    make_runtime, make_settings
):
    first = make_runtime(make_settings()).unsubscriber
    second = make_runtime(make_settings()).unsubscriber
    token = first.links("ann@example.com").url.rsplit("/", 1)[1]
    assert second.verify(token) == OptOut("marketing", address="ann@example.com")
    configured = make_runtime(make_settings(CRM_UNSUBSCRIBE_SECRET="explicit")).unsubscriber
    assert configured.secret == b"explicit"
    with pytest.raises(UnsubscribeTokenError):
        configured.verify(token)


def test_tokens_and_links_are_those_of_the_first_format():
    """Links in mail already sent must keep working: the MAC is HMAC-SHA256 over
    ``crm-unsubscribe:1:<customer>:<channel>``."""
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "_.@-"
    for _ in range(2_000):
        customer = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 128)))
        channel = rng.choice(["email", "webhook", "preview", "sms-gw_2"])
        secret = rng.choice([SECRET, b"k", bytes(range(200))])
        payload = f"{customer}:{channel}".encode()
        digest = hmac.new(secret, b"crm-unsubscribe:1:" + payload, hashlib.sha256).digest()
        expected = ".".join(
            [
                "1",
                *(
                    base64.urlsafe_b64encode(p).rstrip(b"=").decode()
                    for p in (payload, digest[:16])
                ),
            ]
        )
        assert sign(secret, customer, channel) == expected
        # Mail sent with such links still unsubscribes: the token verifies, naming the customer.
        kind = "preview" if channel == "preview" else "marketing"
        assert read_token([b"new key", secret], expected) == OptOut(kind, customer_id=customer)


def test_an_address_token_names_address_kind_and_locale():
    token = sign_address(SECRET, "Jürgen@Example.com", "marketing", "de-CH")
    assert read_token([SECRET], token) == OptOut(
        "marketing", address="jürgen@example.com", locale="de-CH"
    )
    assert token.isascii() and all(c.isalnum() or c in "._-" for c in token)
    assert unverified_locale(token) == "de-CH"


def test_links_carry_an_address_token_in_url_and_mailto():
    unsubscriber = Unsubscriber(SECRET, "https://shop.example.com/u/", "leave@shop.example.com")
    links = unsubscriber.links("ann@example.com", "marketing", "en")
    token = links.url.rsplit("/", 1)[1]
    assert links.url == f"https://shop.example.com/u/{token}"
    assert links.mailto == f"mailto:leave@shop.example.com?subject={quote('unsubscribe ' + token)}"
    assert unsubscriber.verify(token).address == "ann@example.com"


def test_a_rotated_key_still_verifies_old_links_and_a_removed_one_does_not():
    old = sign_address(b"old key", "ann@example.com", "marketing")
    rotated = Unsubscriber(b"new key", "https://x.example/u", "u@x.example", (b"old key",))
    assert rotated.verify(old).address == "ann@example.com"
    assert rotated.verify(rotated.links("bo@example.com").url.rsplit("/", 1)[1]).address
    with pytest.raises(UnsubscribeTokenError, match="signature does not match"):
        Unsubscriber(b"new key", "https://x.example/u", "u@x.example").verify(old)


def _resigned(token: str, payload: bytes) -> str:
    """``token`` with its payload replaced, keeping the old signature (a forgery)."""
    version, _, signature = token.split(".")
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"{version}.{encoded}.{signature}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2],
        lambda t: "2." + t.split(".", 1)[1][::-1],
        lambda t: _resigned(t, b"marketing\x1fen\x1fbob@example.com"),
        lambda t: _resigned(t, b"everything\x1fen\x1fann@example.com"),
        lambda t: "2." + "A" * 5000 + ".AAAA",
        lambda t: "2..",
        lambda t: "3" + t[1:],
    ],
)
def test_forged_address_tokens_are_refused(mangle):
    token = sign_address(SECRET, "ann@example.com", "marketing", "en")
    with pytest.raises(UnsubscribeTokenError):
        read_token([SECRET], mangle(token))


@pytest.mark.parametrize(
    ("address", "kind"),
    [("", "marketing"), ("a@x.com\r\nBcc: b@y.com", "marketing"), ("a@x.com", "service")],
)
def test_what_cannot_be_signed_into_an_address_token_is_refused(address, kind):
    with pytest.raises(ValueError):
        sign_address(SECRET, address, kind)
