"""The public intake under hostile input, over real HTTP (uvicorn on 127.0.0.1, real Redis).

What probing the intake from outside found, one test each: every bad request is a 4xx with a
reason (a CRM retries any other answer forever), never a 5xx, and nothing is recorded."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import test_intake as served
from tests.test_intake import SECRET, TOKEN, event, post
from worker.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER
from worker.intake.auth import sign

# The running intake (token and secret set) and its CRM, as in the intake's own tests.
crm = served.crm
intake = served.intake


@pytest.mark.parametrize(
    "timestamp",
    ["²".encode("latin-1"), "²".encode(), "١٧٠٠٠٠٠٠٠٠".encode(), b"9" * 400, b"-1", b""],
    ids=[
        "superscript-latin1",
        "superscript-utf8",
        "arabic-digits",
        "400-digits",
        "negative",
        "empty",
    ],
)
def test_an_unusable_signature_timestamp_is_401(intake, timestamp):
    url, runtime = intake
    data = json.dumps(event("crm-h1")).encode()
    genuine = sign(SECRET.encode(), data, 0)[SIGNATURE_HEADER]
    answer = httpx.post(
        f"{url}/events",
        content=data,
        headers={
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: genuine,
        },
        timeout=30,
    )
    assert answer.status_code == 401, answer.text
    assert runtime.redis.keys("crm:event:*") == []


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b"[" * 60_000, 400, None, "nested more than 32 levels"),  # within the body limit
        (b"[" * 30_000 + b"]" * 30_000, 400, None, "nested more than 32 levels"),
        (
            json.dumps(event("crm-h2", data={"deep": json.loads("[" * 40 + "]" * 40)})).encode(),
            400,
            "data",
            "nested more than 32 levels",
        ),
        (
            b'{"id": "crm-h3", "type": "purchase.created", "record_id": "P1", '
            b'"data": {"name": "\\ud800"}}',
            422,
            "data.name",
            "lone UTF-16 surrogate",
        ),
        (
            b'{"id": "crm-h4", "type": "purchase.created", "record_id": "P1", '
            b'"data": {"\\udfff": 1}}',
            422,
            "data",
            "lone UTF-16 surrogate",
        ),
        (
            json.dumps(event("crm-h5", at="0001-01-01T00:00:00+01:00")).encode(),
            422,
            "at",
            "outside the years 1-9999",
        ),
        (
            json.dumps(event("crm-h6", at="9999-12-31T23:59:59-01:00")).encode(),
            422,
            "at",
            "outside the years 1-9999",
        ),
    ],
    ids=[
        "nested-60000",
        "nested-30000-closed",
        "deep-data",
        "surrogate",
        "surrogate-key",
        "year-0",
        "year-10000",
    ],
)
def test_json_the_event_store_cannot_keep_is_a_4xx_with_a_reason(
    intake, body, status, field, words
):
    url, runtime = intake
    answer = post(url, body, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field
    assert words in answer.json()["error"]
    assert runtime.redis.keys("crm:event:*") == []


def test_a_trailing_slash_is_404_and_never_echoes_the_host(intake):
    url, _ = intake
    for method, path in [("POST", "/events/"), ("GET", "/health/"), ("GET", "/events//")]:
        answer = httpx.request(
            method,
            f"{url}{path}",
            headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers
        assert "evil.example" not in answer.text
