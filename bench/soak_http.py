"""One HTTP client of the soak: every request timed, counted and its status checked.

Each virtual user has its own `httpx.AsyncClient` (its own keep-alive connections, as
a real client has), so the kernel spreads them over the server's workers.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
from soak_stats import Stats

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
OK = frozenset({200})
CREATED = frozenset({201})
NO_CONTENT = frozenset({204})


def new_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=TIMEOUT,
        trust_env=False,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
    )


@dataclass
class Downloaded:
    status: int
    headers: httpx.Headers
    size: int
    sha256: str
    body: bytes  # kept only when asked for (ranges, small answers)


class Caller:
    def __init__(self, client: httpx.AsyncClient, stats: Stats) -> None:
        self.client = client
        self.stats = stats
        self.token = ""

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def call(
        self,
        kind: str,
        method: str,
        url: str,
        expect: frozenset[int],
        *,
        authed: bool = True,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """The answer (its status counted, a wrong one a failure), or None after a
        transport error (a failure too)."""
        sent = {**(self.auth(token) if authed else {}), **(headers or {})}
        request = f"{method} {url}"
        started = time.perf_counter()
        try:
            response = await self.client.request(method, url, headers=sent, **kwargs)
        except httpx.HTTPError as error:
            self.stats.transport(kind, request, error)
            return None
        self.stats.answered(kind, request, response, time.perf_counter() - started, expect)
        return response

    async def download(
        self,
        kind: str,
        url: str,
        expect: frozenset[int],
        *,
        authed: bool = True,
        headers: dict[str, str] | None = None,
        keep: bool = False,
    ) -> Downloaded | None:
        """A GET whose body is streamed and hashed (timed to its last byte)."""
        sent = {**(self.auth() if authed else {}), **(headers or {})}
        request = f"GET {url}"
        started = time.perf_counter()
        digest = hashlib.sha256()
        size = 0
        kept = bytearray()
        try:
            async with self.client.stream("GET", url, headers=sent) as response:
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
                    if keep or response.status_code not in expect:
                        kept += chunk
        except httpx.HTTPError as error:
            self.stats.transport(kind, request, error)
            return None
        seconds = time.perf_counter() - started
        self.stats.answered(kind, request, response, seconds, expect, body=bytes(kept))
        return Downloaded(
            response.status_code, response.headers, size, digest.hexdigest(), bytes(kept)
        )

    async def sign_in(self, kind: str, email: str, password: str) -> dict[str, Any] | None:
        answer = await self.call(
            kind,
            "POST",
            "/api/v1/auth/token",
            OK,
            authed=False,
            data={"grant_type": "password", "username": email, "password": password},
        )
        if answer is None or answer.status_code != 200:
            return None
        pair: dict[str, Any] = answer.json()
        return pair

    async def refresh(self, refresh_token: str) -> dict[str, Any] | None:
        answer = await self.call(
            "refresh",
            "POST",
            "/api/v1/auth/token",
            OK,
            authed=False,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        )
        if answer is None or answer.status_code != 200:
            return None
        pair: dict[str, Any] = answer.json()
        return pair
