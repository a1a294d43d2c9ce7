"""The frames of the realtime protocol: what a client may send (validated as one
discriminated union on `type`), and what the server sends back."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

ITEMS = "items"
_ROOM = re.compile(r"room:[a-z0-9-]{1,64}")
# A frame from a client may be this large (1009 past it); a message's `data`, as
# compact UTF-8 JSON, this large (an `error` frame past it).
MAX_FRAME_BYTES = 64 * 1024
MAX_MESSAGE_DATA_BYTES = 16 * 1024


def is_room(channel: str) -> bool:
    return _ROOM.fullmatch(channel) is not None


def is_channel(channel: str) -> bool:
    return channel == ITEMS or is_room(channel)


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthFrame(_ClientFrame):
    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=8192)


class SubscribeFrame(_ClientFrame):
    type: Literal["subscribe"]
    channel: str = Field(max_length=100)
    since: str | None = Field(default=None, max_length=64)


class UnsubscribeFrame(_ClientFrame):
    type: Literal["unsubscribe"]
    channel: str = Field(max_length=100)


class PublishFrame(_ClientFrame):
    type: Literal["publish"]
    channel: str = Field(max_length=100)
    data: JsonValue


class PingFrame(_ClientFrame):
    type: Literal["ping"]


ClientFrame = Annotated[
    AuthFrame | SubscribeFrame | UnsubscribeFrame | PublishFrame | PingFrame,
    Field(discriminator="type"),
]
CLIENT_FRAMES: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


def _text(frame: dict[str, object]) -> str:
    return orjson.dumps(frame).decode()


def ready(user_id: str) -> str:
    return _text({"type": "ready", "user_id": user_id})


def subscribed(channel: str) -> str:
    return _text({"type": "subscribed", "channel": channel})


def unsubscribed(channel: str) -> str:
    return _text({"type": "unsubscribed", "channel": channel})


def gap(channel: str) -> str:
    return _text({"type": "gap", "channel": channel})


PONG = _text({"type": "pong"})


def error(code: str, message: str) -> str:
    return _text({"type": "error", "code": code, "message": message})
