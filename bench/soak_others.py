"""The soak's other clients: the admin (reads across every account), the probes of a
load balancer and a scraper (`/health`, `/ready`, `/metrics`), and newcomers who
register, get the welcome e-mail from `keel worker` and verify their address.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from soak_http import CREATED, NO_CONTENT, OK, Caller
from soak_ledger import Account, Gate, Newcomer
from soak_stats import Stats

MAIL_WAIT_SECONDS = 60.0
READ_OR_GONE = frozenset({200, 404})
_LINK = re.compile(r"\S*/verify-email\?\S+")


async def nap(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when the run is told to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class MailBox:
    """The console mail backend's `.eml` files (written by `keel worker`): for each
    recipient, the verification token of its welcome message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.read: set[str] = set()
        self.tokens: dict[str, str] = {}
        self.messages = 0

    def scan(self) -> None:
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("*.eml"):
            if path.name in self.read:
                continue
            self.read.add(path.name)
            self.messages += 1
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            token = next(_tokens(message), None)
            if token is not None:
                self.tokens[str(message["To"]).lower()] = token

    async def token_for(self, address: str, within: float) -> str | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.scan()
            if address in self.tokens:
                return self.tokens[address]
            await asyncio.sleep(0.5)
        return None


def _tokens(message: email.message.Message) -> Iterator[str]:
    for part in message.walk():
        if part.get_content_type() != "text/plain":
            continue
        text = part.get_content()  # type: ignore[attr-defined]
        for link in _LINK.findall(text):
            found = parse_qs(urlsplit(link).query).get("token")
            if found:
                yield found[0]


async def newcomers(
    caller: Caller,
    stats: Stats,
    gate: Gate,
    stop: asyncio.Event,
    mailbox: MailBox,
    every: float,
    password: str,
    joined: list[Newcomer],
) -> None:
    """One registration every `every` seconds, each followed on its own."""
    running: set[asyncio.Task[None]] = set()
    number = 0
    while not stop.is_set():
        await nap(stop, every)
        if stop.is_set():
            break
        number += 1
        newcomer = Newcomer(f"newcomer-{number}@soak.example")
        joined.append(newcomer)
        task = asyncio.create_task(_join(caller, stats, gate, mailbox, password, newcomer))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


async def _join(
    caller: Caller, stats: Stats, gate: Gate, mailbox: MailBox, password: str, who: Newcomer
) -> None:
    async with gate.action():
        answer = await caller.call(
            "register",
            "POST",
            "/api/v1/auth/register",
            CREATED,
            authed=False,
            json={"email": who.email, "password": password, "full_name": "Soak Newcomer"},
        )
    if answer is None or answer.status_code != 201:
        return
    who.user_id = answer.json()["id"]
    token = await mailbox.token_for(who.email, MAIL_WAIT_SECONDS)
    if token is None:
        stats.fail("job not done", f"no welcome e-mail to {who.email} in {MAIL_WAIT_SECONDS} s")
        return
    who.welcomed = True
    async with gate.action():
        answer = await caller.call(
            "verify_email",
            "POST",
            "/api/v1/auth/verify-email",
            NO_CONTENT,
            authed=False,
            json={"token": token},
        )
        if answer is None or answer.status_code != 204:
            return
        who.verified = True
        await caller.sign_in("login", who.email, password)


async def probes(
    caller: Caller, stats: Stats, gate: Gate, stop: asyncio.Event, metrics_token: str
) -> None:
    """What a load balancer and Prometheus do: /health and /ready every 5 s, /metrics
    every 15 s."""
    rounds = 0
    while not stop.is_set():
        async with gate.action():
            await caller.call("health", "GET", "/health", OK, authed=False)
            ready = await caller.call("ready", "GET", "/ready", OK, authed=False)
            if ready is not None and ready.status_code == 200:
                checks = ready.json().get("checks", {})
                if any(value != "ok" for value in checks.values()):
                    stats.fail("wrong answer", f"/ready checks {checks}")
            if rounds % 3 == 0:
                await caller.call("metrics", "GET", "/metrics", OK, token=metrics_token)
        rounds += 1
        await nap(stop, 5.0)


class Admin:
    """Reads across every account (admins read every item) while the owners write."""

    def __init__(
        self, account: Account, caller: Caller, stats: Stats, accounts: list[Account], seed: int
    ) -> None:
        self.account = account
        self.caller = caller
        self.stats = stats
        self.accounts = accounts
        self.rng = random.Random(seed)  # noqa: S311 - load shape, not a secret

    async def run(self, gate: Gate, stop: asyncio.Event, think: float) -> None:
        while not stop.is_set():
            async with gate.action():
                await self.step()
            await nap(stop, self.rng.expovariate(1 / think))

    async def step(self) -> None:
        if time.monotonic() - self.account.token_at > 600:
            pair = await self.caller.refresh(self.account.refresh_token)
            if pair is not None:
                self.account.access_token = self.caller.token = pair["access_token"]
                self.account.refresh_token = pair["refresh_token"]
                self.account.token_at = time.monotonic()
        roll = self.rng.random()
        if roll < 0.5:
            await self.read_any()
        elif roll < 0.8:
            await self.caller.call(
                "admin_item_list",
                "GET",
                "/api/v1/items",
                OK,
                params={"limit": "100", "include_total": "true", "sort": "-updated_at"},
            )
        elif roll < 0.95:
            await self.caller.call("admin_user_list", "GET", "/api/v1/users", OK)
        else:
            await self.caller.download("admin_item_export", "/api/v1/items/export", OK)

    async def read_any(self) -> None:
        """Someone's item, maybe being changed at this moment: 200 with at least the
        version acknowledged before the read, or 404 (deleted meanwhile); once its
        deletion was acknowledged, only 404."""
        owner = self.rng.choice(self.accounts)
        if not owner.items:
            return
        record = self.rng.choice(list(owner.items.values()))
        before, gone = record.version, record.deleted
        answer = await self.caller.call(
            "admin_item_read", "GET", f"/api/v1/items/{record.id}", READ_OR_GONE
        )
        if answer is None or answer.status_code != 200:
            return
        if gone:
            self.stats.fail("wrong answer", f"admin read {record.id}: deleted, but 200")
            return
        shown = answer.json()
        if shown["owner_id"] != owner.user_id or shown["version"] < before:
            self.stats.fail(
                "wrong answer",
                f"admin read {record.id}: owner {shown['owner_id']}, version "
                f"{shown['version']} < {before}",
            )
