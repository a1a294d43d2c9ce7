"""Item changes on the realtime channel `items`, published only once they are committed."""

from __future__ import annotations

from typing import Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.broker import Broker
from keel.core.db import after_commit
from keel.items.schemas import ItemRead
from keel.models import Item

CHANNEL = "items"

ItemEvent = Literal["item.created", "item.updated", "item.deleted"]


def publish_after_commit(
    session: AsyncSession, broker: Broker, event: ItemEvent, item: Item
) -> None:
    # Serialised now, while the object is as this transaction left it.
    message = orjson.dumps(
        {"event": event, "data": ItemRead.model_validate(item).model_dump(mode="json")}
    )

    async def publish() -> None:
        await broker.publish(CHANNEL, message)

    after_commit(session, publish)
