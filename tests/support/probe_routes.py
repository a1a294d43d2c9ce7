"""Routes that exist only in tests, to reach the error paths and the session's rules."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from keel.core.db import DbSession
from keel.core.errors import Conflict
from keel.core.routing import KeelRoute, single_statement

router = APIRouter(prefix="/probe", route_class=KeelRoute)

# Filled by after-commit callbacks, so tests can see whether they ran.
committed_notes: list[str] = []


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=50)
    count: int = 0


@router.post("/notes", status_code=201)
async def create_note(note: Note, session: DbSession) -> Note:
    await session.execute(
        text("INSERT INTO probe_notes (text) VALUES (:text)"), {"text": note.text}
    )

    async def remember() -> None:
        committed_notes.append(note.text)

    session.after_commit(remember)
    if note.text == "conflict":
        # The insert above must be rolled back, and the callback must never run.
        raise Conflict("Refused after writing")
    return note


@router.get("/two-statements")
async def two_statements(session: DbSession) -> dict[str, int]:
    first = await session.value(text("SELECT 1"))
    second = await session.value(text("SELECT 2"))
    return {"sum": first + second}


@router.get("/crash")
async def crash() -> None:
    raise RuntimeError("secret internals: /srv/keel/config.py password=hunter2")


@router.post("/one-statement")
@single_statement
async def one_statement(session: DbSession) -> dict[str, bool]:
    return {"transaction": session.write}


@router.post("/several-statements")
async def several_statements(session: DbSession) -> dict[str, bool]:
    return {"transaction": session.write}


@router.get("/read")
async def read(session: DbSession) -> dict[str, bool]:
    return {"transaction": session.write}
