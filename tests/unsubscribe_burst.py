"""A burst of hostile and ordinary requests against the public unsubscribe pages.

Used by ``tests/test_unsubscribe_burst.py`` (statuses, what was written, memory) and by
``bench/unsubscribe_burst.py`` (requests per second). Each :class:`Probe` says what it is
(``kind``) and which statuses are a clear answer to it; 429 (the per-client rate limit) is a
clear answer to any of them.

Clients are spread over many addresses with ``X-Forwarded-For`` (uvicorn trusts it from
127.0.0.1, as from a reverse proxy on the same host), so most requests reach the token check
instead of the rate limit; one client (``flood``) goes over the limit on purpose.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from worker.messages.unsubscribe import sign, sign_address

ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"
#: Requests per spread client: under the limit of 30 a minute.
PER_CLIENT = 20
#: Requests of the one client that floods.
FLOOD = 100

#: The statuses that answer each kind of probe clearly (429 answers any of them).
EXPECTED: dict[str, frozenset[int]] = {
    "genuine": frozenset({200}),
    "replayed": frozenset({200}),
    "forged": frozenset({200}),
    "forged-v1": frozenset({200}),
    "truncated": frozenset({200, 404}),
    "mangled": frozenset({200, 404}),
    "oversized-token": frozenset({200, 414, 431, 400}),
    "confirm-page": frozenset({200}),
    "undo-forged": frozenset({200}),
    "wrong-method": frozenset({405}),
    "json-body": frozenset({400}),
    "text-body": frozenset({200}),
    "empty-body": frozenset({400}),
    "oversized-body": frozenset({413}),
    "big-header": frozenset({431}),
    "huge-header": frozenset({431}),
    "flood": frozenset({200}),
}


@dataclass(frozen=True)
class Probe:
    kind: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def probes(
    count: int,
    *,
    secret: bytes,
    base_path: str,
    genuine: Sequence[str],
    seed: int = 17,
    first_client: int = 0,
) -> list[Probe]:
    """``count`` probes in a shuffled mix, the first of them one genuine unsubscribe for each
    address of ``genuine`` (the rest of the genuine tokens are replays). Spread clients are
    numbered from ``first_client`` (a second burst within a minute takes new ones)."""
    rng = random.Random(seed)
    tokens = [sign_address(secret, address, "marketing", "en") for address in genuine]
    forger = b"a secret that is not ours"

    def forged() -> str:
        return sign_address(forger, f"victim{rng.randrange(10**6)}@example.com", "marketing", "de")

    def junk(length: int) -> str:
        alphabet = "abcXYZ019-_.~%20%00%FF%C3%A9"
        return "".join(rng.choice(alphabet) for _ in range(length))

    one_click = {"Content-Type": FORM}
    makers = {
        "replayed": lambda: Probe(
            "replayed", "POST", rng.choice(tokens), ONE_CLICK_BODY, one_click
        ),
        "forged": lambda: Probe("forged", "POST", forged(), ONE_CLICK_BODY, one_click),
        "forged-v1": lambda: Probe(
            "forged-v1",
            "POST",
            sign(forger, str(rng.randrange(100)), "email"),
            ONE_CLICK_BODY,
            one_click,
        ),
        "truncated": lambda: Probe(
            "truncated",
            "POST",
            (t := rng.choice(tokens))[: rng.randrange(1, len(t))],
            ONE_CLICK_BODY,
            one_click,
        ),
        "mangled": lambda: Probe(
            "mangled", "POST", junk(rng.randrange(1, 80)), ONE_CLICK_BODY, one_click
        ),
        "oversized-token": lambda: Probe(
            "oversized-token",
            "POST",
            rng.choice(tokens) + "A" * rng.choice([1100, 4000, 7000]),
            ONE_CLICK_BODY,
            one_click,
        ),
        "confirm-page": lambda: Probe("confirm-page", "GET", rng.choice(tokens)),
        "undo-forged": lambda: Probe(
            "undo-forged", "POST", forged() + "/undo", ONE_CLICK_BODY, one_click
        ),
        "wrong-method": lambda: Probe(
            "wrong-method",
            rng.choice(["PUT", "DELETE", "PATCH"]),
            forged(),
            ONE_CLICK_BODY,
            one_click,
        ),
        "json-body": lambda: Probe(
            "json-body",
            "POST",
            forged(),
            b'{"List-Unsubscribe": "One-Click"}',
            {"Content-Type": "application/json"},
        ),
        "text-body": lambda: Probe(
            "text-body", "POST", forged(), ONE_CLICK_BODY, {"Content-Type": "text/plain"}
        ),
        "empty-body": lambda: Probe("empty-body", "POST", forged(), b"", one_click),
        "oversized-body": lambda: Probe(
            "oversized-body", "POST", forged(), ONE_CLICK_BODY + b"&x=" + b"y" * 4000, one_click
        ),
        # Headers over the cap, arriving in one read (h11 alone took them) or in several.
        "big-header": lambda: Probe(
            "big-header", "POST", forged(), ONE_CLICK_BODY, one_click | {"X-Junk": "z" * 9_000}
        ),
        "huge-header": lambda: Probe(
            "huge-header", "POST", forged(), ONE_CLICK_BODY, one_click | {"X-Junk": "z" * 70_000}
        ),
    }
    kinds = list(makers)
    mix = [Probe("genuine", "POST", token, ONE_CLICK_BODY, one_click) for token in tokens]
    flood_client = "198.51.100.1"
    for _ in range(min(FLOOD, max(count - len(mix), 0) // 10)):
        probe = makers["forged"]()
        mix.append(
            Probe(
                "flood",
                probe.method,
                probe.path,
                probe.body,
                probe.headers | {"X-Forwarded-For": flood_client},
            )
        )
    while len(mix) < count:
        mix.append(makers[rng.choice(kinds)]())
    head, rest = mix[: len(tokens)], mix[len(tokens) :]
    rng.shuffle(rest)
    spread = []
    for index, probe in enumerate(rest):
        if "X-Forwarded-For" not in probe.headers:
            client = first_client + index // PER_CLIENT
            address = f"10.{client >> 16 & 255}.{client >> 8 & 255}.{client & 255}"
            probe = Probe(
                probe.kind,
                probe.method,
                probe.path,
                probe.body,
                probe.headers | {"X-Forwarded-For": address},
            )
        spread.append(probe)
    genuine_client = f"192.0.{first_client >> 8 & 255}.{first_client & 255}"
    genuine_first = [
        Probe(p.kind, p.method, p.path, p.body, p.headers | {"X-Forwarded-For": genuine_client})
        for p in head
    ]
    return [
        Probe(p.kind, p.method, f"{base_path}/{p.path}", p.body, p.headers)
        for p in genuine_first + spread
    ]


@dataclass
class BurstResult:
    #: (kind, status) -> how many; status 0: no answer (the connection failed).
    answers: Counter[tuple[str, int]]
    seconds: float

    def unclear(self) -> dict[tuple[str, int], int]:
        """Answers that are not a clear answer to their probe."""
        return {
            (kind, status): n
            for (kind, status), n in self.answers.items()
            if status != 429 and status not in EXPECTED[kind]
        }


async def _run(url: str, batch: Sequence[Probe], concurrency: int) -> BurstResult:
    answers: Counter[tuple[str, int]] = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = list(reversed(batch))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while queue:
                probe = queue.pop()
                try:
                    answer = await client.request(
                        probe.method, probe.path, content=probe.body, headers=probe.headers
                    )
                    status = answer.status_code
                except httpx.TransportError:
                    status = 0
                answers[(probe.kind, status)] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return BurstResult(answers, seconds)


def burst(url: str, batch: Sequence[Probe], *, concurrency: int = 16) -> BurstResult:
    """Send ``batch`` to ``url`` over ``concurrency`` kept-alive connections."""
    return asyncio.run(_run(url, batch, concurrency))


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
