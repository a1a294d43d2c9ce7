"""Dependencies files' routes share: sort orders, the file a path names."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from keel.auth.deps import CurrentPrincipal
from keel.core.db import DbSession
from keel.core.pagination import PageParams, page_params
from keel.files import service
from keel.files.repository import COLUMNS, FileRow

FilePage = Annotated[
    PageParams,
    Depends(
        page_params(
            {"created_at": COLUMNS.created_at, "filename": COLUMNS.filename, "size": COLUMNS.size}
        )
    ),
]


async def _readable_file(file_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession) -> FileRow:
    return await service.get(db, principal, file_id)


# The file the path names, if the caller may read it; 404 otherwise.
FileDep = Annotated[FileRow, Depends(_readable_file)]
