"""Refresh-token rotation under real concurrency, against a live `keel serve`.

- RFC 9700 §4.14.2 and ASVS 5.0 V10.4.5: with rotation, a refresh token is spent by its
  use, and a spent one presented again revokes every token of its grant (the family).
- RFC 6749 §10.4 (refresh tokens bound to their grant) and §5.2 (`invalid_grant`).
- ASVS 5.0 V15.4.2: the check "unspent?" and the spending are one atomic step (no
  TOCTOU window for two requests to both pass).
- OWASP API Security Top 10 2023 API2 (Broken Authentication).

tests/auth/test_token.py covers rotation, reuse detection and a two-way race through
the ASGI app; here many requests race over separate sockets into a real server (and
on PostgreSQL when the run has it), and what the race leaves behind is checked too.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.servers import live_env, serve, wait_until_healthy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = "race.admin@example.com"
PASSWORD = "a long and uncommon passphrase"
RACERS = 8


async def test_many_refreshes_with_one_token_have_one_winner_and_end_the_family(
    tmp_path: Path, migrated_database: str
) -> None:
    env = live_env(
        tmp_path,
        migrated_database,
        KEEL_FIRST_ADMIN_EMAIL=ADMIN,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
    )
    with serve(tmp_path, env) as server:
        await wait_until_healthy(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            login = await client.post(
                "/api/v1/auth/token", data={"username": ADMIN, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            first = login.json()
            other_session = (
                await client.post(
                    "/api/v1/auth/token", data={"username": ADMIN, "password": PASSWORD}
                )
            ).json()

        answers: list[httpx.Response] = []
        # A connection each, all opened before any request is sent, then released at
        # once: the requests really are in flight together.
        clients = [httpx.AsyncClient(base_url=server.url, timeout=20) for _ in range(RACERS)]
        try:
            for racer in clients:
                assert (await racer.get("/health")).status_code == 200
            go = anyio.Event()

            async def race(racer: httpx.AsyncClient) -> None:
                await go.wait()
                answers.append(
                    await racer.post(
                        "/api/v1/auth/token",
                        data={
                            "grant_type": "refresh_token",
                            "refresh_token": first["refresh_token"],
                        },
                    )
                )

            async with anyio.create_task_group() as group:
                for racer in clients:
                    group.start_soon(race, racer)
                await anyio.sleep(0.1)
                go.set()
        finally:
            for racer in clients:
                await racer.aclose()

        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] + [400] * (RACERS - 1), [a.text for a in answers]
        for loser in (answer for answer in answers if answer.status_code == 400):
            assert loser.json()["error"] == "invalid_grant"
        winner = next(answer for answer in answers if answer.status_code == 200).json()

        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            # The losers presented a spent token: the family is over, the winner's new
            # tokens included (the server cannot tell the thief from the owner).
            again = await client.post(
                "/api/v1/auth/token",
                data={"grant_type": "refresh_token", "refresh_token": winner["refresh_token"]},
            )
            assert again.status_code == 400, again.text
            assert again.json()["error"] == "invalid_grant"
            for access in (first["access_token"], winner["access_token"]):
                response = await client.get(
                    "/api/v1/users/me", headers={"Authorization": f"Bearer {access}"}
                )
                assert response.status_code == 401, response.text
            # Another session of the same user is another family: untouched.
            other = {"Authorization": f"Bearer {other_session['access_token']}"}
            assert (await client.get("/api/v1/users/me", headers=other)).status_code == 200
            sessions = await client.get("/api/v1/auth/sessions", headers=other)
            assert [row["current"] for row in sessions.json()["data"]] == [True]
