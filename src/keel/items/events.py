"""Item changes on the realtime channel `items`, published only once they are committed."""

from __future__ import annotations

from typing import Literal

import orjson

from keel.core.broker import Broker
from keel.core.db import Unit
from keel.items.repository import ItemRow
from keel.items.schemas import ItemRead

CHANNEL = "items"

ItemEvent = Literal["item.created", "item.updated", "item.deleted"]


def publish_after_commit(db: Unit, broker: Broker, event: ItemEvent, item: ItemRow) -> None:
    # Serialised now, as this transaction left the item, exactly as the API shows it.
    message = orjson.dumps(
        {"event": event, "data": ItemRead.model_validate(item).model_dump(mode="json")}
    )

    async def publish() -> None:
        await broker.publish(CHANNEL, message)

    db.after_commit(publish)
