"""10,000 requests in a burst against a real `crm-worker intake` process serving the public
unsubscribe pages: forged, truncated, mangled, replayed and oversized tokens, wrong methods,
bodies and content types, one client over the rate limit. Every answer is a clear 2xx/4xx
(429 from the rate limiter included), never a 5xx; only the genuine tokens suppress anything;
the process lives on and its memory stays flat. Speed is measured by bench/unsubscribe_burst.py,
not asserted here."""

from __future__ import annotations

import httpx

from tests.crm_receiver import CrmReceiver
from tests.test_intake_hardening import intake_process, lines_with
from tests.unsubscribe_burst import burst, probes, rss_bytes
from worker.constants import SUPPRESSION_EVENTS_KEY, SUPPRESSION_KEY

SECRET = "burst unsubscribe secret"
BASE = "https://links.shop.example.com/u"
GENUINE = [f"real{n}@example.com" for n in range(20)]
#: Growth of the intake's resident memory allowed over the burst, after a warm-up: a leak of
#: even 3 KB per request would pass it.
RSS_GROWTH_BOUND = 30 * 1024 * 1024


def test_ten_thousand_hostile_requests_get_clear_answers_and_suppress_only_genuine_tokens(
    tmp_path, redis_client
):
    # The CRM's endpoint is configured (so every suppression also writes an event) but not
    # listening: nothing the intake answers depends on it.
    crm = CrmReceiver(b"crm secret")
    settings = {
        "CRM_UNSUBSCRIBE_SECRET": SECRET,
        "CRM_UNSUBSCRIBE_URL": BASE,
        "CRM_CRM_EVENTS_URL": crm.url,
        "CRM_WEBHOOK_SECRET": "crm events secret 0123456789",
    }
    with intake_process(tmp_path, **settings) as (process, url, log_path):
        warm_up = probes(1_000, secret=SECRET.encode(), base_path="/u", genuine=GENUINE)
        warmed = burst(url, warm_up)
        assert warmed.unclear() == {}, warmed.answers
        before = rss_bytes(process.pid)

        batch = probes(
            10_000,
            secret=SECRET.encode(),
            base_path="/u",
            genuine=GENUINE,
            seed=18,
            first_client=1_000,
        )
        result = burst(url, batch)
        after = rss_bytes(process.pid)

        assert sum(result.answers.values()) == 10_000
        assert result.unclear() == {}, sorted(result.answers.items())
        assert not [key for key in result.answers if key[1] >= 500 or key[1] == 0]
        statuses = {status for _, status in result.answers}
        kinds = {kind for kind, _ in result.answers}
        # The mix really reached each kind of refusal, and the rate limiter.
        assert {400, 405, 413, 429, 431} <= statuses, result.answers
        assert len(kinds) >= 15, kinds
        # Most requests came through the limiter to the token check.
        assert result.answers[("flood", 429)] >= 1
        assert sum(n for (_, s), n in result.answers.items() if s == 429) < 1_000

        assert process.poll() is None
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert after - before < RSS_GROWTH_BOUND, (before, after)

    # Only the genuine tokens wrote anything: each address once, one event each (a replay of a
    # genuine token is no change), nothing for a forged, truncated or mangled one.
    suppressed = {key.decode() for key in redis_client.hkeys(SUPPRESSION_KEY)}
    assert suppressed == set(GENUINE)
    assert redis_client.xlen(SUPPRESSION_EVENTS_KEY) == len(GENUINE)
    assert lines_with(log_path, "Traceback") == []
    # A burst of refusals is a few log lines, not one per request.
    assert len(lines_with(log_path, "token was refused")) <= 2
