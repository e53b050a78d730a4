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
from worker.unsubscribe import Unsubscriber, UnsubscribeRequest, sign, verify

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
    token = first.links("42", "email").url.rsplit("/", 1)[1]
    assert second.verify(token) == UnsubscribeRequest("42", "email")
    configured = make_runtime(make_settings(CRM_UNSUBSCRIBE_SECRET="explicit")).unsubscriber
    assert configured.secret == b"explicit"
    with pytest.raises(UnsubscribeTokenError):
        configured.verify(token)


def test_tokens_and_links_are_those_of_the_first_format():
    """Links in mail already sent must keep working: the MAC is HMAC-SHA256 over
    ``crm-unsubscribe:1:<customer>:<channel>``, and the mailto subject is quote()d."""
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "_.@-"
    unsubscriber = Unsubscriber(SECRET, "https://shop.example.com/u/", "leave@shop.example.com")
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
        links = unsubscriber.links(customer, channel)
        token = sign(SECRET, customer, channel)
        assert links.url == f"https://shop.example.com/u/{token}"
        assert (
            links.mailto == f"mailto:leave@shop.example.com?subject={quote('unsubscribe ' + token)}"
        )
