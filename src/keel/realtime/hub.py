"""Every realtime connection of this process: how one starts (origin, credentials,
the first frame within the time allowed), and the checks that end them (credentials
expired, session ended, user deactivated, server shutting down).

Ended sessions are looked for in one batch for all connections every
`KEEL_REALTIME_CHECK_INTERVAL_SECONDS` (one Redis round trip, however many connections),
and connections on an API key re-check it (a database read) five times as rarely.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from keel.auth.deps import Authenticator, Principal, credential_of
from keel.auth.revocation import SessionRevocations
from keel.config import Settings
from keel.core.broker import Broker
from keel.core.db import Database
from keel.core.metrics import Metrics
from keel.realtime import frames
from keel.realtime.connection import (
    BAD_CREDENTIALS,
    POLICY_VIOLATION,
    TOO_BIG,
    Connection,
)

log = structlog.get_logger("keel.realtime")

NO_AUTH_IN_TIME = 4408
GOING_AWAY = 1001
API_KEY_CHECK_EVERY = 5  # checks


class RealtimeHub:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        authenticator: Authenticator,
        revocations: SessionRevocations,
        database: Database,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.authenticator = authenticator
        self.revocations = revocations
        self.database = database
        self.metrics = metrics
        self.connections: set[Connection] = set()
        self._allowed_origins = {*settings.cors.origins, settings.public_base_url}
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="keel-realtime-watch")

    async def close(self) -> None:
        """Shutting down: every connection is closed with 1001."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for connection in list(self.connections):
            connection.close(GOING_AWAY, "server shutting down", "shutdown")

    async def authenticate(self, credential: str) -> Principal:
        async with self.database.transaction() as db:
            return await self.authenticator.principal(credential, db)

    # -- a connection's life ------------------------------------------------------------

    def _origin_allowed(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        return origin is None or origin in self._allowed_origins or "*" in self._allowed_origins

    async def serve(self, websocket: WebSocket) -> None:
        if not self._origin_allowed(websocket):
            await websocket.close(code=1008)  # before accepting: the handshake is 403
            return
        principal: Principal | None = None
        try:
            header = credential_of(websocket)
            if header is not None:
                principal = await self.authenticate(header)
        except Exception:  # noqa: BLE001 - a refused credential on the handshake is 403
            await websocket.close(code=1008)
            return
        await websocket.accept()
        if principal is None:
            first = await self._first_frame(websocket)
            if first is None:
                return
            header, principal = first
        assert header is not None  # noqa: S101 - set with principal
        connection = Connection(
            websocket,
            principal,
            header,
            broker=self.broker,
            metrics=self.metrics,
            reauthenticate=self.authenticate,
            outbox_frames=self.settings.realtime.outbox_frames,
            publish_burst=self.settings.realtime.publish_burst,
            publish_per_second=self.settings.realtime.publish_per_second,
        )
        connection.send(frames.ready(str(principal.user_id)))
        self.connections.add(connection)
        self.metrics.ws_connections.inc()
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.metrics.ws_connections.dec()

    async def _first_frame(self, websocket: WebSocket) -> tuple[str, Principal] | None:
        """The `auth` frame's credential and who it names, within the time allowed;
        None when the connection ended (closed here with the code that says why)."""
        text = await self._first_text(websocket)
        if text is None:
            return None
        try:
            frame = frames.CLIENT_FRAMES.validate_json(text)
        except ValueError:
            frame = None
        principal = None
        if isinstance(frame, frames.AuthFrame):
            with contextlib.suppress(Exception):  # any refusal of the credential
                principal = await self.authenticate(frame.token)
        if principal is None or not isinstance(frame, frames.AuthFrame):
            self.metrics.ws_closes.labels("bad_credentials").inc()
            await websocket.close(BAD_CREDENTIALS, "the first frame must be a valid auth")
            return None
        return frame.token, principal

    async def _first_text(self, websocket: WebSocket) -> str | None:
        try:
            async with asyncio.timeout(self.settings.realtime.auth_timeout_seconds):
                message = await websocket.receive()
        except TimeoutError:
            self.metrics.ws_closes.labels("no_auth").inc()
            await websocket.close(NO_AUTH_IN_TIME, "no auth in time")
            return None
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        if text is None or len(text) > frames.MAX_FRAME_BYTES:
            await websocket.close(POLICY_VIOLATION if text is None else TOO_BIG)
            return None
        return text

    # -- the checks that end connections --------------------------------------------------

    async def _watch(self) -> None:
        interval = self.settings.realtime.check_interval_seconds
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            rounds += 1
            try:
                await self._check(api_keys=rounds % API_KEY_CHECK_EVERY == 0)
            except Exception:
                log.warning("realtime_check_failed", exc_info=True)

    async def _check(self, *, api_keys: bool) -> None:
        now = datetime.now(UTC)
        by_session: dict[object, list[Connection]] = {}
        for connection in list(self.connections):
            principal = connection.principal
            if principal.expires_at is not None and principal.expires_at <= now:
                connection.close(BAD_CREDENTIALS, "credentials expired", "expired")
            elif principal.session_id is not None:
                by_session.setdefault(principal.session_id, []).append(connection)
            elif api_keys:
                try:
                    connection.principal = await self.authenticate(connection.credential)
                except Exception:  # noqa: BLE001 - the key was revoked or its user deactivated
                    connection.close(BAD_CREDENTIALS, "credentials revoked", "revoked")
        if not by_session:
            return
        ended = await self.revocations.revoked_among(list(by_session))  # type: ignore[arg-type]
        for session_id in ended:
            for connection in by_session[session_id]:
                connection.close(BAD_CREDENTIALS, "session ended", "revoked")
