"""Long transfers (exports, downloads, uploads) and the clients that stall them.

A transfer lasts as long as its client takes, which the client decides. Three bounds
keep a slow or stalled client from costing more than its share:

- **Slots.** Each transfer holds a slot while it runs: at most `per_user` for one
  caller (beyond it: 429, another caller is unaffected) and `per_process` in all
  (beyond it: 503). A slot is given back however the transfer ends.
- **Send timeout.** A streamed response whose client reads nothing for
  `send_timeout` seconds (the server's send waits on a full socket buffer that long)
  is dropped: the response stops, and the server closes the connection.
- **Receive timeout.** An upload body from which nothing arrives for
  `receive_timeout` seconds is refused with 408.

No pooled database connection is held meanwhile: a transfer reads the database in
short units of work before (downloads, uploads) or between (exports) its sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from starlette.responses import StreamingResponse

from keel.core.errors import RateLimited, RequestTimeout, ServiceUnavailable

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

log = structlog.get_logger("keel.transfers")

# Seconds a caller refused for having too many transfers should wait.
BUSY_RETRY_AFTER_SECONDS = 5


class Slot:
    """One running transfer's place; `release` gives it back (once, however often
    it is called)."""

    def __init__(self, slots: TransferSlots, owner: Hashable) -> None:
        self._slots = slots
        self._owner = owner
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self._owner)

    def __del__(self) -> None:
        # A backstop: a response that was built but never sent (the request failed
        # after its endpoint answered) still gives its slot back.
        self.release()


class TransferSlots:
    """How many transfers run at once in this process, and per caller."""

    def __init__(self, per_process: int, per_user: int) -> None:
        self.per_process = per_process
        self.per_user = per_user
        self._running = 0
        self._by_owner: dict[Hashable, int] = {}

    @property
    def running(self) -> int:
        return self._running

    def take(self, owner: Hashable) -> Slot:
        """A slot for `owner`'s transfer: 429 when `owner` already runs `per_user`,
        503 when the process runs `per_process`."""
        held = self._by_owner.get(owner, 0)
        if held >= self.per_user:
            raise RateLimited(
                f"At most {self.per_user} downloads, exports and uploads at once per user",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        if self._running >= self.per_process:
            log.warning("transfer_slots_exhausted", running=self._running)
            raise ServiceUnavailable("Too many transfers in progress: try again shortly")
        self._by_owner[owner] = held + 1
        self._running += 1
        return Slot(self, owner)

    def _give_back(self, owner: Hashable) -> None:
        self._running -= 1
        left = self._by_owner.get(owner, 1) - 1
        if left > 0:
            self._by_owner[owner] = left
        else:
            self._by_owner.pop(owner, None)


class _ClientStalled(Exception):
    pass


class TransferResponse(StreamingResponse):
    """A streamed response that drops a client reading nothing for `send_timeout`
    seconds, and gives its slot back when it ends, whichever way."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        slot: Slot,
        send_timeout: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self.slot = slot
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self.send_timeout

        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        try:
            await super().__call__(scope, receive, send_in_time)
        except _ClientStalled:
            # The response is cut short: returning without its last message makes the
            # server close the connection (Uvicorn logs that it was left incomplete).
            log.warning("stalled_client_dropped", path=scope.get("path"), seconds=timeout)
        finally:
            self.slot.release()
            body: Any = self.body_iterator
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()


async def within_receive_timeout(
    chunks: AsyncIterator[bytes], idle_seconds: float
) -> AsyncIterator[bytes]:
    """`chunks` (a request body), refused with 408 once nothing arrives for
    `idle_seconds`: a client that stops sending cannot hold a transfer forever, and one
    that sends a byte now and then holds only its own slots (TransferSlots)."""
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"Nothing of the body arrived for {idle_seconds:g} seconds",
                headers={"Connection": "close"},
            ) from None
        yield chunk
