"""The HTTP client bench/run.sh uses where wrk alone cannot: tokens, refresh-token pools
and the login loop of the `health_under_logins` scenario (httpx, Keel's .venv).

    python bench/bench_client.py token URL EMAIL
        the password grant's answer for EMAIL, as JSON on stdout
    python bench/bench_client.py sessions URL EMAIL COUNT
        COUNT new sessions of EMAIL (password grants, two at a time): their refresh
        tokens on stdout, one a line
    python bench/bench_client.py logins URL SECONDS EMAIL...
        one client per EMAIL signs in with the password grant, again and again, for
        SECONDS; a JSON summary on stdout (logins, seconds, logins/s, statuses, latency)

The password of every account is $BENCH_PASSWORD. URL is Keel's base URL; only loopback
addresses are accepted. Every request has a timeout and every loop a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

TOKEN_PATH = "/api/v1/auth/token"  # noqa: S105 - a path, not a secret
REQUEST_TIMEOUT = 30.0
# Keel hashes two passwords at once on two cores: more in flight only queue up.
SESSIONS_AT_ONCE = 2


def _fail(message: str) -> None:
    sys.stderr.write(f"bench_client: {message}\n")
    raise SystemExit(2)


def _base_url(url: str) -> str:
    if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        _fail(f"only loopback addresses are benchmarked, not {url}")
    return url.rstrip("/")


def _password() -> str:
    password = os.environ.get("BENCH_PASSWORD")
    if not password:
        _fail("set BENCH_PASSWORD")
    return password or ""


async def _sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(
        TOKEN_PATH, data={"grant_type": "password", "username": email, "password": password}
    )


async def token(url: str, email: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        answer = await _sign_in(client, email, _password())
    if answer.status_code != 200:
        _fail(f"sign-in of {email} answered {answer.status_code}: {answer.text[:300]}")
    sys.stdout.write(json.dumps(answer.json()) + "\n")


async def sessions(url: str, email: str, count: int) -> None:
    password = _password()
    gate = asyncio.Semaphore(SESSIONS_AT_ONCE)

    async def one(client: httpx.AsyncClient) -> str:
        async with gate:
            answer = await _sign_in(client, email, password)
        if answer.status_code != 200:
            _fail(f"sign-in of {email} answered {answer.status_code}: {answer.text[:300]}")
        return str(answer.json()["refresh_token"])

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        tokens = await asyncio.gather(*(one(client) for _ in range(count)))
    sys.stdout.write("".join(f"{t}\n" for t in tokens))


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def logins(url: str, seconds: float, emails: list[str]) -> None:
    password = _password()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def client_loop(client: httpx.AsyncClient, email: str) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                answer = await _sign_in(client, email, password)
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
                continue
            statuses[str(answer.status_code)] += 1
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=len(emails), max_keepalive_connections=len(emails))
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        # The last sign-in may start just before the deadline: give it its timeout, no more.
        await asyncio.wait_for(
            asyncio.gather(*(client_loop(client, e) for e in emails)),
            timeout=seconds + REQUEST_TIMEOUT + 5,
        )
    elapsed = time.perf_counter() - start
    ms = [1000 * v for v in latencies]
    summary = {
        "clients": len(emails),
        "logins": len(latencies),
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 2),
        "statuses": dict(statuses),
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(p99, 1) if (p99 := _percentile(ms, 0.99)) is not None else None,
    }
    sys.stdout.write(json.dumps(summary) + "\n")


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        _fail(__doc__ or "usage")
    command, url = argv[0], _base_url(argv[1])
    if command == "token" and len(argv) == 3:
        asyncio.run(token(url, argv[2]))
    elif command == "sessions" and len(argv) == 4:
        asyncio.run(sessions(url, argv[2], int(argv[3])))
    elif command == "logins" and len(argv) >= 4:
        asyncio.run(logins(url, float(argv[2]), argv[3:]))
    else:
        _fail(f"unknown command or arguments: {' '.join(argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
