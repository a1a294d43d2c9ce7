"""core/openapi.py on an app of its own: error statuses and security derived from what
each route depends on, however deep, and the one error shape for all of them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form
from pydantic import BaseModel

from keel.core.openapi import answers, install_openapi, secured_by

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


@answers(401)
@secured_by("OAuth2PasswordBearer", "BearerToken", "ApiKeyHeader")
async def signed_in() -> str:
    return "someone"


@answers(403)
@secured_by("OAuth2PasswordBearer", "BearerToken")
async def password_only(who: Annotated[str, Depends(signed_in)]) -> str:
    return who


@answers(503)
async def database() -> None:
    return None


class Body(BaseModel):
    name: str


# Shared by a route's declaration: completing the document must leave it as it is.
DECLARED_HEADERS = {"Location": {"schema": {"type": "string"}}}


def build() -> dict[str, Any]:
    app = FastAPI()

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {}

    @app.get("/deep")
    async def deep(
        _who: Annotated[str, Depends(password_only)], _db: Annotated[None, Depends(database)]
    ) -> None:
        return None

    @app.post(
        "/json/{thing_id}",
        responses={200: {"headers": DECLARED_HEADERS}, 409: {"description": "Taken"}},
    )
    async def json_body(thing_id: uuid.UUID, body: Body) -> None:
        return None

    @app.post("/form")
    async def form_body(name: Annotated[str, Form()]) -> None:
        return None

    install_openapi(app, tags=[])
    return app.openapi()


DOCUMENT = build()


def responses(path: str, method: str) -> dict[str, Any]:
    found: dict[str, Any] = DOCUMENT["paths"][path][method]["responses"]
    return found


def test_a_route_with_nothing_to_refuse_documents_only_its_answer() -> None:
    assert set(responses("/plain", "get")) == {"200"}
    assert "security" not in DOCUMENT["paths"]["/plain"]["get"]


def test_statuses_come_from_dependencies_at_any_depth() -> None:
    found = responses("/deep", "get")
    assert set(found) == {"200", "401", "403", "503"}
    for status in ("401", "403", "503"):
        assert found[status]["content"] == ERROR
    assert found["401"]["headers"]["WWW-Authenticate"] == {
        "$ref": "#/components/headers/WWW-Authenticate"
    }
    assert "Retry-After" in found["503"]["headers"]


def test_security_is_what_every_credential_check_accepts() -> None:
    # signed_in takes three schemes, password_only two of them: the route takes two.
    assert DOCUMENT["paths"]["/deep"]["get"]["security"] == [
        {"OAuth2PasswordBearer": []},
        {"BearerToken": []},
    ]
    assert "X-API-Key" in str(DOCUMENT["components"]["securitySchemes"])


def test_a_json_body_and_a_path_id_add_their_errors_and_keep_the_routes_own() -> None:
    found = responses("/json/{thing_id}", "post")
    assert set(found) == {"200", "404", "409", "413", "415", "422"}
    assert found["409"]["description"] == "Taken"
    assert found["409"]["content"] == ERROR
    # FastAPI's HTTPValidationError is replaced: Keel never answers with it.
    assert found["422"]["content"] == ERROR
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]


def test_a_form_body_cannot_be_of_the_wrong_json_type() -> None:
    assert set(responses("/form", "post")) == {"200", "413", "422"}


def test_every_answer_names_its_request_id() -> None:
    for item in DOCUMENT["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                assert response["headers"]["X-Request-ID"] == {
                    "$ref": "#/components/headers/X-Request-ID"
                }


def test_completing_the_document_changes_no_declaration() -> None:
    assert DECLARED_HEADERS == {"Location": {"schema": {"type": "string"}}}
    assert set(responses("/json/{thing_id}", "post")["200"]["headers"]) == {
        "Location",
        "X-Request-ID",
    }
