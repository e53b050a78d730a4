"""Unsubscribe tokens: carry customer and channel, cannot be forged or edited."""

from __future__ import annotations

import pytest

from worker.errors import UnsubscribeTokenError
from worker.unsubscribe import UnsubscribeRequest, sign, verify

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
