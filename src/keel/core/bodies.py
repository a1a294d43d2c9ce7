"""The base of every JSON request body (API.md, Conventions).

- Unknown fields are refused (422): no silent mass assignment.
- JSON types are taken as sent (pydantic's strict mode): `true` is not a number, `0`
  is not a boolean and `"5"` is not an integer, each a 422 naming the field.
- Two kinds of field say how their JSON form differs from the Python value:
  `FromText` for a value JSON carries as a string (an enum, a UUID, a time), which
  strict mode would otherwise ask to be the Python object itself; and `WholeNumber` for
  an integer, which JSON Schema (and so every generated client) may also write as
  `30.0`, a number with no fractional part.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict

# Annotate a body field with this when JSON carries it as a string: `Annotated[Role, FromText]`.
FromText = Strict(strict=False)


def _integral_float_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The last annotation of an integer field of a request body, after its constraints (so
# that they stay in the schema): `Annotated[int, Field(ge=1), WholeNumber]` takes `30`
# or `30.0`, never `true`, `"30"` or `30.5`.
WholeNumber = BeforeValidator(_integral_float_as_int)


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
