"""The end of the soak: every acknowledged write read back, and every realtime client
checked for what it should have got.

Items: each one GET by its owner (a live one with its fields and version, a deleted
one 404), then each owner's ndjson export must be exactly its live items (nothing
lost, nothing extra), and the admin's total of all items their sum. Files: each one's
metadata and bytes (sha256), deleted ones 404 for both, each owner's full list exactly
its live files, the admin's total their sum. Newcomers: the welcome e-mail written
by `keel worker`, and the address verified when that was acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import orjson
from soak_http import OK, Caller
from soak_ledger import Account, Event, FileRecord, ItemRecord, Newcomer
from soak_others import MAIL_WAIT_SECONDS, MailBox
from soak_realtime import RealtimeClient
from soak_stats import Stats

READ_OR_GONE = frozenset({200, 404})
CONCURRENCY = 8
LOST = "lost write"


@dataclass
class Checked:
    items_live: int = 0
    items_deleted: int = 0
    item_updates: int = 0
    items_uncertain: int = 0
    files_live: int = 0
    files_deleted: int = 0
    files_uncertain: int = 0
    newcomers: int = 0
    newcomers_verified: int = 0
    item_events_expected: int = 0
    room_messages_acked: int = 0
    room_deliveries_expected: int = 0
    publishes_unsure: int = 0
    realtime_wait_seconds: float = 0.0
    realtime: dict[str, int] = field(default_factory=dict)


async def verify_writes(
    accounts: list[Account],
    callers: list[Caller],
    admin: Caller,
    newcomers: list[Newcomer],
    mailbox: MailBox,
    stats: Stats,
    checked: Checked,
) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def bounded(work: Awaitable[None]) -> None:
        async with gate:
            await work

    jobs: list[Awaitable[None]] = []
    for account, caller in zip(accounts, callers, strict=True):
        for item in account.items.values():
            if item.uncertain:
                checked.items_uncertain += 1
                continue
            jobs.append(bounded(_item(caller, stats, account, item, checked)))
        for stored in account.files.values():
            if stored.uncertain:
                checked.files_uncertain += 1
                continue
            jobs.append(bounded(_file(caller, stats, stored, checked)))
        jobs.append(bounded(_export(caller, stats, account)))
        jobs.append(bounded(_all_files(caller, stats, account)))
    await asyncio.gather(*jobs)
    await _totals(admin, stats, accounts)
    await _newcomers(admin, stats, newcomers, mailbox, checked)


async def _item(
    caller: Caller, stats: Stats, account: Account, item: ItemRecord, checked: Checked
) -> None:
    answer = await caller.call("verify_item", "GET", f"/api/v1/items/{item.id}", READ_OR_GONE)
    if answer is None:
        return
    if item.deleted:
        checked.items_deleted += 1
        if answer.status_code != 404:
            stats.fail(LOST, f"item {item.id} of {account.email}: deleted, but it is still there")
        return
    checked.items_live += 1
    checked.item_updates += item.version - 1
    if answer.status_code != 200:
        stats.fail(LOST, f"item {item.id} of {account.email} (version {item.version}): gone")
        return
    problems = item.matches(answer.json())
    if problems:
        stats.fail(LOST, f"item {item.id} of {account.email}: " + "; ".join(problems))


async def _file(caller: Caller, stats: Stats, stored: FileRecord, checked: Checked) -> None:
    url = f"/api/v1/files/{stored.id}"
    answer = await caller.call("verify_file", "GET", url, READ_OR_GONE)
    got = await caller.download("verify_file_content", url + "/content", READ_OR_GONE)
    if answer is None or got is None:
        return
    if stored.deleted:
        checked.files_deleted += 1
        if (answer.status_code, got.status) != (404, 404):
            stats.fail(LOST, f"file {stored.id}: deleted, but {answer.status_code}/{got.status}")
        return
    checked.files_live += 1
    if (answer.status_code, got.status) != (200, 200):
        stats.fail(LOST, f"file {stored.id}: {answer.status_code}/{got.status}")
        return
    problems = stored.matches(answer.json())
    if got.sha256 != stored.sha256:
        problems.append(f"content: {got.size} bytes, sha256 {got.sha256}")
    if problems:
        stats.fail(LOST, f"file {stored.id}: " + "; ".join(problems))


async def _export(caller: Caller, stats: Stats, account: Account) -> None:
    got = await caller.download("verify_export", "/api/v1/items/export", OK, keep=True)
    if got is None or got.status != 200:
        return
    shown = {
        item["id"]: item for item in (orjson.loads(line) for line in got.body.splitlines() if line)
    }
    live = {item.id: item for item in account.live_items()}
    uncertain = {item.id for item in account.items.values() if item.uncertain}
    missing = set(live) - set(shown)
    extra = set(shown) - set(live) - uncertain
    wrong = {i for i in set(live) & set(shown) if live[i].matches(shown[i])}
    if missing or extra or wrong:
        examples = sorted(missing | extra | wrong)[:3]
        stats.fail(
            LOST,
            f"export of {account.email}: {len(missing)} missing, {len(extra)} that should "
            f"not be there, {len(wrong)} different (e.g. {examples})",
        )


async def _all_files(caller: Caller, stats: Stats, account: Account) -> None:
    """Every page of the owner's files (100 a page): exactly the live ones."""
    shown: set[str] = set()
    params = {"limit": "100"}
    while True:
        answer = await caller.call("verify_file_list", "GET", "/api/v1/files", OK, params=params)
        if answer is None or answer.status_code != 200:
            return
        page = answer.json()
        shown |= {entry["id"] for entry in page["data"]}
        if not page["next_cursor"]:
            break
        params = {"limit": "100", "cursor": page["next_cursor"]}
    live = {stored.id for stored in account.live_files()}
    uncertain = {stored.id for stored in account.files.values() if stored.uncertain}
    if shown - uncertain != live:
        stats.fail(
            LOST,
            f"files of {account.email}: {len(live - shown)} missing, "
            f"{len(shown - live - uncertain)} that should not be there",
        )


async def _totals(admin: Caller, stats: Stats, accounts: list[Account]) -> None:
    """The admin sees every item and file: their totals must be the ledgers' sums."""
    for what, expected, uncertain in (
        (
            "items",
            sum(len(a.live_items()) for a in accounts),
            sum(1 for a in accounts for i in a.items.values() if i.uncertain),
        ),
        (
            "files",
            sum(len(a.live_files()) for a in accounts),
            sum(1 for a in accounts for f in a.files.values() if f.uncertain),
        ),
    ):
        answer = await admin.call(
            f"verify_{what}_total",
            "GET",
            f"/api/v1/{what}",
            OK,
            params={"limit": "1", "include_total": "true"},
        )
        if answer is None or answer.status_code != 200:
            continue
        total = answer.json()["total"]
        if not expected <= total <= expected + uncertain:
            stats.fail(LOST, f"the admin counts {total} {what}, the ledgers {expected}")


async def _newcomers(
    admin: Caller, stats: Stats, newcomers: list[Newcomer], mailbox: MailBox, checked: Checked
) -> None:
    deadline = time.monotonic() + MAIL_WAIT_SECONDS
    for who in newcomers:
        if not who.user_id:
            continue  # the registration was not acknowledged (counted where it failed)
        checked.newcomers += 1
        if await mailbox.token_for(who.email, max(0.0, deadline - time.monotonic())) is None:
            stats.fail("job not done", f"no welcome e-mail to {who.email}")
        answer = await admin.call("verify_user", "GET", f"/api/v1/users/{who.user_id}", OK)
        if answer is None or answer.status_code != 200:
            stats.fail(LOST, f"newcomer {who.email}: {answer and answer.status_code}")
            continue
        shown = answer.json()
        if shown["email"] != who.email or (who.verified and not shown["is_verified"]):
            stats.fail(LOST, f"newcomer {who.email}: {shown}")
        checked.newcomers_verified += who.verified


# -- realtime ------------------------------------------------------------------------------


def expected_events(client: RealtimeClient, accounts: list[Account]) -> set[Event]:
    owners = accounts if client.sees_all else [client.account]
    return {event for account in owners for event in account.events}


def room_acks(clients: list[RealtimeClient]) -> dict[str, set[str]]:
    acked: dict[str, set[str]] = {}
    for client in clients:
        acked.setdefault(client.room, set()).update(client.acked)
    return acked


def realtime_shortfall(
    clients: list[RealtimeClient], accounts: list[Account]
) -> tuple[int, int, int]:
    """(item events missing, room messages missing, publishes never echoed), over every
    client."""
    acked = room_acks(clients)
    events = sum(len(c.missing_events(expected_events(c, accounts))) for c in clients)
    messages = sum(len(c.missing_messages(acked[c.room])) for c in clients)
    lost = sum(len(c.lost_publishes()) for c in clients)
    return events, messages, lost


async def verify_realtime(
    clients: list[RealtimeClient],
    accounts: list[Account],
    stats: Stats,
    checked: Checked,
    patience: float = 30.0,
) -> None:
    """Once the load has stopped, wait (up to `patience` seconds) for the last frames,
    then fail on whatever is still missing."""
    started = time.monotonic()
    while time.monotonic() - started < patience:
        if not any(realtime_shortfall(clients, accounts)):
            break
        await asyncio.sleep(0.5)
    checked.realtime_wait_seconds = time.monotonic() - started
    acked = room_acks(clients)
    for client in clients:
        expected = expected_events(client, accounts)
        checked.item_events_expected += len(expected)
        checked.room_deliveries_expected += len(acked[client.room])
        checked.publishes_unsure += len(client.unsure - client.acked)
        missing = client.missing_events(expected)
        if missing:
            stats.fail(
                "realtime missing",
                f"{client.name} ({client.account.email}): {len(missing)} of {len(expected)} "
                f"item events, e.g. {sorted(missing)[:2]}",
            )
        absent = client.missing_messages(acked[client.room])
        if absent:
            stats.fail(
                "realtime missing",
                f"{client.name}: {len(absent)} of {len(acked[client.room])} messages of "
                f"{client.room}, e.g. {sorted(absent)[:3]}",
            )
        lost = client.lost_publishes()
        if lost:
            stats.fail(
                "realtime missing", f"{client.name}: published, never echoed: {sorted(lost)[:3]}"
            )
    checked.room_messages_acked = sum(len(marks) for marks in acked.values())
