"""The OpenAPI document itself (issue 12, point 13): every operation named, summarised
and secured, every error it can answer documented in the one error shape, and the
field rules (passwords among them) in the schemas, so that generated clients and
generated requests follow them. Schemathesis checks the server against it
(test_schemathesis.py); these tests check what it says."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI

from keel.config import Settings
from keel.core.security.passwords import MAX_LENGTH, MIN_LENGTH
from keel.main import create_app

ERROR_REF = {"$ref": "#/components/schemas/Error"}
TOKEN_URL = "/api/v1/auth/token"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app: FastAPI = create_app(Settings(_env_file=None, env="test"))
    return app.openapi()


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every operation by its id."""
    found: dict[str, dict[str, Any]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                found[operation["operationId"]] = {**operation, "method": method, "path": path}
    return found


def header(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference.get("$ref", "").removeprefix("#/components/headers/")
    resolved: dict[str, Any] = document["components"]["headers"][name] if name else reference
    return resolved


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    # The OpenAPI 3.1 meta-schema wants an absolute tokenUrl (format "uri"); the document
    # keeps it relative, so that Swagger UI signs in on whatever host serves it (an
    # absolute one would name KEEL_PUBLIC_BASE_URL, another origin behind a proxy).
    checked = copy.deepcopy(document)
    flows = checked["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    flows["password"]["tokenUrl"] = "https://keel.example" + TOKEN_URL
    schemathesis.openapi.from_dict(checked).validate()


def test_every_operation_has_a_unique_stable_id_of_its_tag(document: dict[str, Any]) -> None:
    ids: list[str] = []
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            [tag] = operation["tags"]
            assert re.fullmatch(rf"{re.escape(tag)}(-[a-z]+)+", operation["operationId"]), (
                operation["operationId"]
            )
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids))
    # What generated clients are built on: these names must not change by accident.
    assert {
        "auth-register",
        "auth-token",
        "users-me-get",
        "users-me-update",
        "items-list",
        "items-create",
        "items-get",
        "items-replace",
        "items-update",
        "items-delete",
        "items-export",
        "files-upload",
        "api-keys-create",
        "operations-ready",
    } <= set(ids)


def test_tags_are_described_and_summaries_are_one_line(document: dict[str, Any]) -> None:
    described = {tag["name"] for tag in document["tags"] if tag.get("description")}
    for operation in operations(document).values():
        assert set(operation["tags"]) <= described
        summary = operation["summary"]
        # The endpoint's docstring, not FastAPI's title-cased function name.
        assert "\n" not in summary
        assert summary.endswith((".", ")")), summary


def test_every_error_answer_is_the_one_error_shape(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert set(schemas["Error"]["required"]) == {"error"}
    assert set(schemas["ErrorInfo"]["required"]) == {"code", "message", "request_id", "details"}
    assert set(schemas["ErrorDetail"]["required"]) == {"loc", "msg", "type"}
    checked = 0
    for operation_id, operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400 or (operation_id, status) in {
                ("auth-token", "400"),  # RFC 6749 §5.2's own body
                ("operations-ready", "503"),  # the readiness report, naming what failed
            }:
                continue
            assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (
                operation_id,
                status,
            )
            checked += 1
    assert checked > 150


def test_every_response_carries_the_request_id(document: dict[str, Any]) -> None:
    for operation in operations(document).values():
        for response in operation["responses"].values():
            assert header(document, response["headers"]["X-Request-ID"])["required"] is True


def statuses(document: dict[str, Any], operation_id: str) -> set[int]:
    return {int(status) for status in operations(document)[operation_id]["responses"]}


@pytest.mark.parametrize(
    ("operation_id", "expected", "absent"),
    [
        # No dependency at all: only its success.
        ("operations-health", {200}, {401, 422, 503}),
        ("auth-jwks", {200}, {401, 503}),
        # A JSON body, a database, a per-IP limit, and the route's own 403 and 409.
        ("auth-register", {201, 403, 409, 413, 415, 422, 429, 503}, {401, 404}),
        # A form body: no 415 (another type is RFC 6749's invalid_request, a 400).
        ("auth-token", {200, 400, 413, 429, 503}, {401, 415, 422}),
        # Signed in, nothing more: 401, and no 403.
        ("users-me-get", {200, 401, 503}, {403, 404, 422}),
        # A role: 403; paging: a cursor not ours (400), bad parameters (422).
        ("users-list", {200, 400, 401, 403, 422, 503}, {404, 413}),
        # A password sign-in only (403 with an API key), and a path id (404).
        ("api-keys-delete", {204, 401, 403, 404, 422, 503}, {413, 415}),
        # If-Match (412), a body, a path id, a moderator's 403.
        ("items-update", {200, 401, 403, 404, 412, 413, 415, 422, 503}, {409, 429}),
        # An ETag: 304 on a GET.
        ("items-get", {200, 304, 401, 404, 422, 503}, {403, 412}),
        # Idempotency-Key: 409 while the first request runs.
        ("items-create", {201, 401, 409, 413, 415, 422, 503}, {404, 412}),
        ("files-content", {200, 206, 304, 401, 404, 416, 422, 503}, {413}),
        ("files-upload", {201, 400, 401, 409, 413, 415, 422, 503}, {404}),
    ],
)
def test_error_statuses_follow_from_what_a_route_depends_on(
    document: dict[str, Any], operation_id: str, expected: set[int], absent: set[int]
) -> None:
    found = statuses(document, operation_id)
    assert expected <= found
    assert not absent & found


def test_errors_carry_their_headers(document: dict[str, Any]) -> None:
    for operation_id, operation in operations(document).items():
        responses = operation["responses"]
        required = {
            "401": "WWW-Authenticate",
            "429": "Retry-After",
            "503": "Retry-After",
        }
        for status, name in required.items():
            if status in responses:
                assert header(document, responses[status]["headers"][name])["required"], (
                    operation_id
                )
        budget = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
        if budget <= set(responses.get("429", {}).get("headers", {})):
            # A rate-limited route describes its budget on every answer (a 429 for a
            # busy transfer slot has no budget to describe).
            for response in responses.values():
                assert budget <= set(response["headers"])
    limited = {
        operation_id
        for operation_id, operation in operations(document).items()
        if "RateLimit-Limit" in operation["responses"].get("429", {}).get("headers", {})
    }
    assert limited == {
        "auth-register",
        "auth-token",
        "auth-forgot-password",
        "auth-verify-email-request",
    }


def test_versioned_answers_document_their_etag(document: dict[str, Any]) -> None:
    found = operations(document)
    for operation_id, status in [
        ("items-get", "200"),
        ("items-get", "304"),
        ("items-create", "201"),
        ("items-replace", "200"),
        ("items-update", "200"),
    ]:
        assert found[operation_id]["responses"][status]["headers"]["ETag"]["required"]
    assert "200" not in found["items-delete"]["responses"]
    assert found["items-create"]["responses"]["201"]["headers"]["Location"]["required"]


def test_security_schemes_let_swagger_ui_sign_in(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == TOKEN_URL
    assert "post" in document["paths"][TOKEN_URL]
    assert schemes["BearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["BearerToken"]["description"],
    }
    assert schemes["ApiKeyHeader"]["in"] == "header"
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"


def security(document: dict[str, Any], operation_id: str) -> set[str]:
    requirements = operations(document)[operation_id].get("security", [])
    return {name for requirement in requirements for name in requirement}


def test_each_operation_names_the_credentials_it_takes(document: dict[str, Any]) -> None:
    everything = {"OAuth2PasswordBearer", "BearerToken", "ApiKeyHeader"}
    assert security(document, "items-list") == everything
    assert security(document, "users-list") == everything
    # API keys are refused here (API.md, "API keys"): a password sign-in only.
    for operation_id in ("api-keys-create", "auth-logout-all", "users-me-delete"):
        assert security(document, operation_id) == {"OAuth2PasswordBearer", "BearerToken"}
    for operation_id in ("auth-register", "auth-token", "auth-logout", "files-download"):
        assert security(document, operation_id) == set()
    for operation_id, operation in operations(document).items():
        assert ("401" in operation["responses"]) == bool(operation.get("security")) or (
            operation_id == "operations-metrics"  # its own token, when one is set
        ), operation_id


def body_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ("RegisterRequest", "password"),
        ("UserCreate", "password"),
        ("ResetPasswordRequest", "new_password"),
        ("PasswordChange", "new_password"),
    ],
)
def test_the_password_rules_are_in_the_schema(
    document: dict[str, Any], schema: str, field: str
) -> None:
    password = body_schema(document, schema)["properties"][field]
    assert password["type"] == "string"
    assert (password["minLength"], password["maxLength"]) == (MIN_LENGTH, MAX_LENGTH) == (8, 128)
    assert "common" in password["description"]
    assert field in body_schema(document, schema)["required"]


def test_field_rules_are_in_the_schema(document: dict[str, Any]) -> None:
    register = body_schema(document, "RegisterRequest")
    assert register["properties"]["email"]["format"] == "email"
    assert register["additionalProperties"] is False
    item = body_schema(document, "ItemWrite")["properties"]
    assert (item["title"]["minLength"], item["title"]["maxLength"]) == (1, 200)
    assert item["description"]["maxLength"] == 10_000
    assert item["tags"]["maxItems"] == 10
    assert item["tags"]["items"]["pattern"] == "^[a-z0-9-]{1,32}$"
    status = body_schema(document, "ItemStatus")
    assert status["enum"] == ["draft", "active", "archived"]
    # PATCH: every field optional, none of them nullable (null is refused with 422).
    update = body_schema(document, "ItemUpdate")["properties"]
    assert "null" not in str(update)
    assert update["title"]["minLength"] == 1
    expiry = body_schema(document, "ApiKeyCreate")["properties"]["expires_in_days"]
    [days, none] = expiry["anyOf"]  # optional: no expiry
    assert (days["minimum"], days["maximum"], none["type"]) == (1, 3650, "null")
    link = body_schema(document, "LinkRequest")["properties"]["expires_in"]
    assert (link["minimum"], link["maximum"]) == (1, 86_400)
    parameters = {
        parameter["name"]: parameter["schema"]
        for parameter in operations(document)["items-create"]["parameters"]
    }
    assert parameters["Idempotency-Key"]["pattern"] == "^[!-~]{1,255}$"
    listing = {
        parameter["name"]: parameter["schema"]
        for parameter in operations(document)["items-list"]["parameters"]
    }
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"]) == (1, 100)
    assert "-created_at" in listing["sort"]["enum"]
