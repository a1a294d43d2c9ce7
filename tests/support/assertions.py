"""Assertions shared by the test modules."""

from __future__ import annotations

from typing import Any

import httpx

# The fields of API.md's User, exactly.
USER_FIELDS = frozenset(
    {"id", "email", "full_name", "role", "is_active", "is_verified", "created_at", "updated_at"}
)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`response` is API.md's error shape with this status and code, and the request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert isinstance(error["details"], list)
    return dict(error)
