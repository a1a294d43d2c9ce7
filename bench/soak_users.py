"""The virtual users of the soak: each drives one account, one request at a time, with
a mix of item, file and sign-in requests, and checks every answer against its ledger.

Only its virtual user writes an account's items and files, so every read, list page
and export must show exactly the ledger: the soak checks that while it runs, not only
at the end.
"""

from __future__ import annotations

import csv
import io
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from soak_files import FileActions
from soak_http import CREATED, NO_CONTENT, OK, Caller
from soak_ledger import Account, ItemRecord
from soak_stats import Stats

ITEMS = "/api/v1/items"
TAGS = ("red", "green", "blue", "urgent", "later", "soak", "x-1", "y-2")
STATUSES = ("draft", "active", "archived")
# Access tokens live 15 minutes; a virtual user refreshes well before.
TOKEN_MAX_AGE = 600.0
CSV_PREFIXED = ("=", "+", "-", "@", "\t", "\r")
GONE = frozenset({404})

# action -> weight: what a user does, roughly how often.
WEIGHTS = {
    "create": 10,
    "read": 20,
    "read_gone": 2,
    "patch": 10,
    "put": 3,
    "stale_write": 1,
    "delete": 3,
    "list_items": 6,
    "export": 0.5,
    "upload": 3,
    "download": 5,
    "link": 1,
    "delete_file": 1,
    "list_files": 1,
    "refresh": 3,
    "login": 0.5,
    "me": 2,
}


def item_body(rng: random.Random, number: int, *, full: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"title": f"Soak item {number} {rng.randrange(10**6)}"}
    if full or rng.random() < 0.5:
        body["description"] = rng.choice(["", "d" * rng.randrange(1, 2000), "=1+1 (a formula)"])
    if full or rng.random() < 0.5:
        body["status"] = rng.choice(STATUSES)
    if full or rng.random() < 0.5:
        body["tags"] = rng.sample(TAGS, rng.randrange(0, 4))
    return body


def with_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """An item's fields after a POST or PUT of `body` (API.md's defaults for the rest)."""
    return {"description": "", "status": "draft", "tags": [], **body}


def etag(version: int) -> str:
    return f'"{version}"'


class VirtualUser(FileActions):
    def __init__(
        self,
        index: int,
        account: Account,
        caller: Caller,
        anonymous: Caller,
        stats: Stats,
        password: str,
        seed: int,
    ) -> None:
        self.index = index
        self.account = account
        self.caller = caller
        self.anonymous = anonymous
        self.stats = stats
        self.password = password
        self.rng = random.Random(seed)  # noqa: S311 - load shape, not a secret
        self.made = 0
        self.uncertain_creates = 0
        self._actions: dict[str, Callable[[], Awaitable[None]]] = {
            name: getattr(self, name) for name in WEIGHTS
        }
        self._names = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())

    # -- the loop -------------------------------------------------------------------------

    async def step(self) -> None:
        if time.monotonic() - self.account.token_at > TOKEN_MAX_AGE:
            await self.refresh()
        name = self.rng.choices(self._names, self._weights)[0]
        await self._actions[name]()

    def _pick_item(self, *, gone: bool = False) -> ItemRecord | None:
        pool = self.account.gone_items() if gone else self.account.live_items()
        return self.rng.choice(pool) if pool else None

    def _check_item(self, what: str, record: ItemRecord, shown: dict[str, Any]) -> None:
        problems = record.matches(shown)
        if shown.get("owner_id") != self.account.user_id:
            problems.append(f"owner_id {shown.get('owner_id')}")
        if problems:
            self.wrong(what, f"item {record.id}: " + "; ".join(problems))

    # -- items ----------------------------------------------------------------------------

    async def create(self) -> None:
        self.made += 1
        body = item_body(self.rng, self.made)
        keyed = self.rng.random() < 0.5
        headers = {"Idempotency-Key": f"soak-{uuid.uuid4()}"} if keyed else {}
        answer = await self.caller.call(
            "item_create", "POST", ITEMS, CREATED, headers=headers, json=body
        )
        if answer is None or answer.status_code >= 500:
            self.uncertain_creates += 1
            return
        if answer.status_code != 201:
            return
        shown = answer.json()
        record = ItemRecord(shown["id"], with_defaults(body))
        self.account.items[record.id] = record
        self.account.events.append(("item.created", record.id, 1))
        self._check_item("create", record, shown)
        if answer.headers.get("etag") != etag(1):
            self.wrong("create", f"ETag {answer.headers.get('etag')}")
        if answer.headers.get("location") != f"{ITEMS}/{record.id}":
            self.wrong("create", f"Location {answer.headers.get('location')}")
        if keyed and self.rng.random() < 0.3:
            again = await self.caller.call(
                "item_create_replay", "POST", ITEMS, CREATED, headers=headers, json=body
            )
            if again is not None and again.status_code == 201 and again.json() != shown:
                self.stats.fail(
                    "idempotency", f"replay of {record.id} answered {again.json()['id']}"
                )

    async def read(self) -> None:
        record = self._pick_item()
        if record is None:
            return await self.create()
        if self.rng.random() < 0.2:
            await self.caller.call(
                "item_read_304",
                "GET",
                f"{ITEMS}/{record.id}",
                frozenset({304}),
                headers={"If-None-Match": etag(record.version)},
            )
            return None
        answer = await self.caller.call("item_read", "GET", f"{ITEMS}/{record.id}", OK)
        if answer is not None and answer.status_code == 200:
            self._check_item("read", record, answer.json())
            if answer.headers.get("etag") != etag(record.version):
                self.wrong("read", f"ETag {answer.headers.get('etag')} of {record.id}")
        return None

    async def read_gone(self) -> None:
        record = self._pick_item(gone=True)
        if record is not None:
            await self.caller.call("item_read_deleted", "GET", f"{ITEMS}/{record.id}", GONE)

    async def _change(
        self, kind: str, method: str, body: dict[str, Any], new: dict[str, Any]
    ) -> None:
        record = self._pick_item()
        if record is None:
            return
        answer = await self.caller.call(
            kind,
            method,
            f"{ITEMS}/{record.id}",
            OK,
            headers={"If-Match": etag(record.version)},
            json=body,
        )
        if answer is None or answer.status_code >= 500:
            record.uncertain = True
            return
        if answer.status_code != 200:
            return
        record.fields = new if method == "PUT" else {**record.fields, **new}
        record.version += 1
        self.account.events.append(("item.updated", record.id, record.version))
        self._check_item(kind, record, answer.json())

    async def patch(self) -> None:
        changes = item_body(self.rng, self.made, full=False)
        if self.rng.random() < 0.5:
            changes.pop("title")  # a PATCH of only the other fields (when any)
        if not changes:
            changes = {"status": self.rng.choice(STATUSES)}
        await self._change("item_patch", "PATCH", changes, changes)

    async def put(self) -> None:
        body = item_body(self.rng, self.made, full=False)
        await self._change("item_put", "PUT", body, with_defaults(body))

    async def stale_write(self) -> None:
        """If-Match with a version that is not the current one: 412, and nothing changes
        (the next read or the final check would see a change)."""
        record = self._pick_item()
        if record is None:
            return
        await self.caller.call(
            "item_stale_write",
            "PATCH",
            f"{ITEMS}/{record.id}",
            frozenset({412}),
            headers={"If-Match": etag(record.version - 1)},
            json={"title": "must not be written"},
        )

    async def delete(self) -> None:
        record = self._pick_item()
        if record is None:
            return
        answer = await self.caller.call(
            "item_delete",
            "DELETE",
            f"{ITEMS}/{record.id}",
            NO_CONTENT,
            headers={"If-Match": etag(record.version)},
        )
        if answer is None or answer.status_code >= 500:
            record.uncertain = True
        elif answer.status_code == 204:
            record.deleted = True
            self.account.events.append(("item.deleted", record.id, 0))

    async def list_items(self) -> None:
        """The first page, newest first, must be exactly the ledger's 20 newest live
        items; with `include_total`, the total its live count."""
        total = self.rng.random() < 0.3
        params = {"limit": "20", **({"include_total": "true"} if total else {})}
        answer = await self.caller.call("item_list", "GET", ITEMS, OK, params=params)
        if answer is None or answer.status_code != 200:
            return
        page = answer.json()
        live = self.account.live_items()
        expected = [r.id for r in live[-20:]][::-1]
        shown = [item["id"] for item in page["data"]]
        if shown != expected:
            self.wrong("list", f"page 1 ids {shown[:3]}... != {expected[:3]}...")
        for item in page["data"]:
            record = self.account.items.get(item["id"])
            if record is not None:
                self._check_item("list", record, item)
        if total and page.get("total") != len(live):
            self.wrong("list", f"total {page.get('total')} != {len(live)}")
        if page.get("next_cursor") and self.rng.random() < 0.3:
            await self.caller.call(
                "item_list_next", "GET", ITEMS, OK, params={"cursor": page["next_cursor"]}
            )

    async def export(self) -> None:
        as_csv = self.rng.random() < 0.3
        fmt = "csv" if as_csv else "ndjson"
        got = await self.caller.download(
            f"item_export_{fmt}", f"{ITEMS}/export?format={fmt}", OK, keep=True
        )
        if got is None or got.status != 200:
            return
        live = {r.id: r for r in self.account.live_items()}
        text = got.body.decode()
        if as_csv:
            rows = list(csv.DictReader(io.StringIO(text)))
            seen = {row["id"]: row for row in rows}
            for item_id, row in seen.items():
                record = live.get(item_id)
                if record is None:
                    continue
                description = record.fields["description"]
                if description.startswith(CSV_PREFIXED):
                    description = "'" + description
                if int(row["version"]) != record.version or row["description"] != description:
                    self.wrong("export csv", f"row {item_id} version {row['version']}")
        else:
            items = [orjson.loads(line) for line in text.splitlines() if line]
            seen = {item["id"]: item for item in items}
            for item_id, item in seen.items():
                if item_id in live:
                    self._check_item("export", live[item_id], item)
        if set(seen) != set(live):
            self.wrong(
                f"export {fmt}",
                f"{len(set(live) - set(seen))} live items missing, "
                f"{len(set(seen) - set(live))} not live shown",
            )

    # -- sign-in --------------------------------------------------------------------------

    async def refresh(self) -> None:
        pair = await self.caller.refresh(self.account.refresh_token)
        if pair is not None:
            self.account.access_token = self.caller.token = pair["access_token"]
            self.account.refresh_token = pair["refresh_token"]
            self.account.token_at = time.monotonic()

    async def login(self) -> None:
        """A second session: signed in, used, logged out; its access token must then be
        refused (API.md: on its next request)."""
        pair = await self.caller.sign_in("login", self.account.email, self.password)
        if pair is None:
            return
        token = pair["access_token"]
        await self.caller.call("me", "GET", "/api/v1/users/me", OK, token=token)
        answer = await self.caller.call(
            "logout",
            "POST",
            "/api/v1/auth/logout",
            NO_CONTENT,
            authed=False,
            json={"refresh_token": pair["refresh_token"]},
        )
        if answer is not None and answer.status_code == 204:
            await self.caller.call(
                "me_after_logout", "GET", "/api/v1/users/me", frozenset({401}), token=token
            )

    async def me(self) -> None:
        answer = await self.caller.call("me", "GET", "/api/v1/users/me", OK)
        if answer is not None and answer.status_code == 200:
            shown = answer.json()
            if (shown["id"], shown["email"]) != (self.account.user_id, self.account.email):
                self.wrong("me", f"{shown['id']} {shown['email']}")
