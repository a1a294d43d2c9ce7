"""The realtime endpoint, `WS /api/v1/realtime` (API.md, "Realtime"): the hub serves
each connection (realtime/hub.py), the connection its frames (realtime/connection.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket

from keel.core.deps import app_state
from keel.realtime.hub import RealtimeHub

PATH = "/api/v1/realtime"
router = APIRouter(tags=["realtime"])

Hub = Annotated[RealtimeHub, Depends(app_state("realtime"))]


@router.websocket(PATH)
async def realtime(websocket: WebSocket, hub: Hub) -> None:
    """Channels of item events and room messages, resumable with `since`."""
    await hub.serve(websocket)
