"""A virtual user's file requests (mixed into `VirtualUser`): uploads of a few sizes
and types (some with an `Idempotency-Key`, some replayed), downloads whole, in ranges
and conditional, signed links, lists and deletions, each answer checked against the
ledger. The bytes are never kept: they are made again from each file's seed."""

from __future__ import annotations

import random
import uuid

from soak_http import CREATED, NO_CONTENT, OK, Caller
from soak_ledger import (
    FILE_SIZES,
    FILE_TYPES,
    Account,
    FileRecord,
    file_content,
    sha256,
)
from soak_stats import Stats

FILES = "/api/v1/files"


class FileActions:
    index: int
    account: Account
    caller: Caller
    anonymous: Caller
    stats: Stats
    rng: random.Random
    made: int
    uncertain_creates: int

    def wrong(self, what: str, detail: str) -> None:
        self.stats.fail("wrong answer", f"{self.account.email} {what}: {detail}")

    def _pick_file(self) -> FileRecord | None:
        pool = self.account.live_files()
        return self.rng.choice(pool) if pool else None

    async def upload(self) -> None:
        sizes = [size for size, _ in FILE_SIZES]
        size = self.rng.choices(sizes, [weight for _, weight in FILE_SIZES])[0]
        kind, declared, detected = self.rng.choice(FILE_TYPES)
        seed = self.rng.getrandbits(63)
        content = file_content(kind, size, seed)
        self.made += 1
        name = f"soak-{self.index}-{self.made}.{kind}"
        keyed = self.rng.random() < 0.3
        headers = {"Idempotency-Key": f"soak-{uuid.uuid4()}"} if keyed else {}
        files = {"file": (name, content, declared)}
        answer = await self.caller.call(
            "file_upload", "POST", FILES, CREATED, headers=headers, files=files
        )
        if answer is None or answer.status_code >= 500:
            self.uncertain_creates += 1
            return
        if answer.status_code != 201:
            return
        shown = answer.json()
        record = FileRecord(shown["id"], kind, name, detected, len(content), seed, sha256(content))
        self.account.files[record.id] = record
        problems = record.matches(shown)
        if problems:
            self.wrong("upload", f"file {record.id}: " + "; ".join(problems))
        if keyed and self.rng.random() < 0.3:
            again = await self.caller.call(
                "file_upload_replay", "POST", FILES, CREATED, headers=headers, files=files
            )
            if again is not None and again.status_code == 201 and again.json() != shown:
                self.stats.fail("idempotency", f"replay of file {record.id}: {again.json()}")

    async def download(self) -> None:
        record = self._pick_file()
        if record is None:
            return await self.upload()
        url = f"{FILES}/{record.id}/content"
        roll = self.rng.random()
        if roll < 0.15:
            await self.caller.download(
                "file_download_304",
                url,
                frozenset({304}),
                headers={"If-None-Match": f'"{record.sha256}"'},
            )
        elif roll < 0.45:
            first = self.rng.randrange(record.size)
            last = min(record.size - 1, first + self.rng.randrange(1, 256 * 1024))
            got = await self.caller.download(
                "file_download_range",
                url,
                frozenset({206}),
                headers={"Range": f"bytes={first}-{last}"},
                keep=True,
            )
            if got is not None and got.status == 206:
                range_header = got.headers.get("content-range")
                if range_header != f"bytes {first}-{last}/{record.size}":
                    self.wrong("range", f"{record.id}: Content-Range {range_header}")
                if got.body != record.content()[first : last + 1]:
                    self.wrong("range", f"{record.id}: bytes {first}-{last} differ")
        else:
            got = await self.caller.download("file_download", url, OK)
            if got is not None and got.status == 200 and got.sha256 != record.sha256:
                self.wrong("download", f"{record.id}: {got.size} bytes, sha256 {got.sha256}")
        return None

    async def link(self) -> None:
        record = self._pick_file()
        if record is None:
            return
        answer = await self.caller.call(
            "file_link", "POST", f"{FILES}/{record.id}/link", OK, json={"expires_in": 120}
        )
        if answer is None or answer.status_code != 200:
            return
        got = await self.anonymous.download(
            "file_link_download", answer.json()["url"], OK, authed=False
        )
        if got is not None and got.status == 200 and got.sha256 != record.sha256:
            self.wrong("link download", f"{record.id}: sha256 {got.sha256}")

    async def delete_file(self) -> None:
        record = self._pick_file()
        if record is None:
            return
        answer = await self.caller.call("file_delete", "DELETE", f"{FILES}/{record.id}", NO_CONTENT)
        if answer is None or answer.status_code >= 500:
            record.uncertain = True
        elif answer.status_code == 204:
            record.deleted = True

    async def list_files(self) -> None:
        answer = await self.caller.call("file_list", "GET", FILES, OK, params={"limit": "20"})
        if answer is None or answer.status_code != 200:
            return
        shown = answer.json()["data"]
        expected = [r.id for r in self.account.live_files()[-20:]][::-1]
        if [f["id"] for f in shown] != expected:
            self.wrong("file list", f"page 1 has {len(shown)} files, not the 20 newest")
        for item in shown:
            record = self.account.files.get(item["id"])
            if record is not None and record.matches(item):
                self.wrong("file list", f"{record.id}: " + "; ".join(record.matches(item)))
