"""The base of every JSON request body (API.md, Conventions).

- Unknown fields are refused (422): no silent mass assignment.
- JSON types are taken as sent (pydantic's strict mode): `true` is not a number, `0`
  is not a boolean and `"5"` is not an integer, each a 422 naming the field. A field
  whose JSON form is a string (an enum, a UUID, a time) is marked `FromText`, since
  strict mode would otherwise ask for the Python object itself.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Strict

# Annotate a body field with this when JSON carries it as a string: `Annotated[Role, FromText]`.
FromText = Strict(strict=False)


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
