"""User administration (API.md, "Users": GET/POST /users, GET/PATCH/DELETE /users/{id})."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.users import SignedIn, login, make_user, signed_in
from tests.fixtures.queries import StatementCounter
from tests.support.assertions import USER_FIELDS, assert_error
from tests.users.test_me import (
    ME,
    USERS,
    assert_invalid_grant,
    assert_invalid_token,
    claims,
    detail_locs,
    refresh,
)

pytestmark = pytest.mark.anyio

UNKNOWN_ID = "0190f0f0-0000-7000-8000-000000000000"


async def make_users(app: FastAPI, count: int, stem: str, **fields: Any) -> list[uuid.UUID]:
    """`count` users (no login each); their ids in creation order."""
    return [
        (await make_user(app, email=f"{stem}{number}@bulk.example", **fields)).id
        for number in range(count)
    ]


async def list_users(client: httpx.AsyncClient, who: SignedIn, **params: Any) -> dict[str, Any]:
    response = await client.get(USERS, params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_pages(
    client: httpx.AsyncClient, who: SignedIn, cursor: str | None = None, **params: Any
) -> list[str]:
    """Every id from `cursor` (the first page without one), following next_cursor."""
    ids: list[str] = []
    for _ in range(1000):
        if cursor is not None:
            params["cursor"] = cursor
        page = await list_users(client, who, **params)
        ids.extend(user["id"] for user in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("paging never ended")


def emails(page: dict[str, Any]) -> list[str]:
    return [user["email"] for user in page["data"]]


async def stored(client: httpx.AsyncClient, admin: SignedIn, user_id: object) -> dict[str, Any]:
    response = await client.get(f"{USERS}/{user_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Who may do what

WRITES = [
    pytest.param(
        "POST", "", {"email": "new@example.com", "password": "a good new passphrase"}, id="POST"
    ),
    pytest.param("PATCH", "/{target}", {"full_name": "Renamed", "role": "admin"}, id="PATCH"),
    pytest.param("DELETE", "/{target}", None, id="DELETE"),
]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "", None, id="GET list"),
        pytest.param("GET", "/{target}", None, id="GET other"),
        pytest.param("GET", "/{self}", None, id="GET own id"),
        *WRITES,
    ],
)
async def test_a_user_may_not_administer(
    app: FastAPI,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    caller = await signed_in(app, client, Role.USER)
    target = await make_user(app, full_name="Target")
    admin = await signed_in(app, client, Role.ADMIN)
    url = USERS + path.format(target=target.id, self=caller.user.id)

    response = await client.request(method, url, json=body, headers=caller.headers)

    assert_error(response, 403, "FORBIDDEN")
    await assert_unchanged(client, admin, target.id)


async def assert_unchanged(client: httpx.AsyncClient, admin: SignedIn, target_id: object) -> None:
    after = await stored(client, admin, target_id)
    assert after["full_name"] == "Target"
    assert after["role"] == "user"
    assert_invalid_grant(await login(client, "new@example.com", "a good new passphrase"))


async def test_a_moderator_may_list_users(app: FastAPI, client: httpx.AsyncClient) -> None:
    moderator = await signed_in(app, client, Role.MODERATOR)
    target = await make_user(app)
    page = await list_users(client, moderator)
    assert {user["id"] for user in page["data"]} == {str(moderator.user.id), str(target.id)}
    assert set(page["data"][0]) == USER_FIELDS


async def test_a_moderator_may_read_a_user(app: FastAPI, client: httpx.AsyncClient) -> None:
    moderator = await signed_in(app, client, Role.MODERATOR)
    target = await make_user(app, full_name="Read Me")
    body = await stored(client, moderator, target.id)
    assert set(body) == USER_FIELDS
    assert body["id"] == str(target.id)
    assert body["email"] == target.email
    assert body["full_name"] == "Read Me"
    assert (await stored(client, moderator, moderator.user.id))["role"] == "moderator"


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_a_moderator_may_not_change_users(
    app: FastAPI,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    moderator = await signed_in(app, client, Role.MODERATOR)
    target = await make_user(app, full_name="Target")
    admin = await signed_in(app, client, Role.ADMIN)

    response = await client.request(
        method, USERS + path.format(target=target.id), json=body, headers=moderator.headers
    )

    assert_error(response, 403, "FORBIDDEN")
    await assert_unchanged(client, admin, target.id)


async def test_admin_endpoints_need_credentials(client: httpx.AsyncClient) -> None:
    for method, url in [
        ("GET", USERS),
        ("GET", f"{USERS}/{UNKNOWN_ID}"),
        ("DELETE", f"{USERS}/{UNKNOWN_ID}"),
    ]:
        response = await client.request(method, url)
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == "Bearer"


# GET one user by id


async def test_an_admin_reads_any_user(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await make_user(app, role=Role.MODERATOR, is_verified=False)
    body = await stored(client, admin, target.id)
    assert body["id"] == str(target.id)
    assert body["role"] == "moderator"
    assert body["is_verified"] is False


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_unknown_user_id_is_404(app: FastAPI, client: httpx.AsyncClient, method: str) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    body = {"full_name": "x"} if method == "PATCH" else None
    response = await client.request(
        method, f"{USERS}/{uuid.uuid4()}", json=body, headers=admin.headers
    )
    assert_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_user_id_that_is_not_a_uuid_is_422(
    app: FastAPI, client: httpx.AsyncClient, method: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    body = {"full_name": "x"} if method == "PATCH" else None
    response = await client.request(method, f"{USERS}/not-a-uuid", json=body, headers=admin.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["path", "user_id"] in detail_locs(error)


# GET /users: filters


async def test_filter_q_matches_email_or_name_ignoring_case(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    by_email = await make_user(app, email="jsmith@example.com", full_name="John")
    by_name = await make_user(app, email="ada@example.com", full_name="Ada SMITHSON")
    await make_user(app, email="other@example.com", full_name="Smyth")

    for q in ("smith", "SMITH", "Smith"):
        page = await list_users(client, admin, q=q)
        assert {user["id"] for user in page["data"]} == {str(by_email.id), str(by_name.id)}
    page = await list_users(client, admin, q="JSMITH@EXAMPLE")
    assert [user["id"] for user in page["data"]] == [str(by_email.id)]
    assert (await list_users(client, admin, q="nobody-like-this"))["data"] == []


async def test_filter_q_takes_wildcards_literally(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    percent = await make_user(app, email="pct@example.com", full_name="100% Pure")
    await make_user(app, email="plain@example.com", full_name="100 Pure and more")
    underscore = await make_user(app, email="a_b@example.com")
    await make_user(app, email="axb@example.com")
    backslash = await make_user(app, email="bs@example.com", full_name="back\\slash")
    await make_user(app, email="bs2@example.com", full_name="backslash")

    assert [u["id"] for u in (await list_users(client, admin, q="100%"))["data"]] == [
        str(percent.id)
    ]
    assert [u["id"] for u in (await list_users(client, admin, q="a_b"))["data"]] == [
        str(underscore.id)
    ]
    assert [u["id"] for u in (await list_users(client, admin, q="k\\s"))["data"]] == [
        str(backslash.id)
    ]
    assert [u["id"] for u in (await list_users(client, admin, q="%"))["data"]] == [str(percent.id)]


async def test_filter_role(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    moderator = await make_user(app, role=Role.MODERATOR)
    user = await make_user(app)

    assert [u["id"] for u in (await list_users(client, admin, role="moderator"))["data"]] == [
        str(moderator.id)
    ]
    assert [u["id"] for u in (await list_users(client, admin, role="user"))["data"]] == [
        str(user.id)
    ]
    assert [u["id"] for u in (await list_users(client, admin, role="admin"))["data"]] == [
        str(admin.user.id)
    ]
    response = await client.get(USERS, params={"role": "superuser"}, headers=admin.headers)
    assert ["query", "role"] in detail_locs(assert_error(response, 422, "VALIDATION_ERROR"))


async def test_filter_is_active(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    inactive = await make_user(app, is_active=False)
    active = await make_user(app)

    inactive_page = await list_users(client, admin, is_active="false")
    assert [u["id"] for u in inactive_page["data"]] == [str(inactive.id)]
    assert inactive_page["data"][0]["is_active"] is False
    active_ids = {u["id"] for u in (await list_users(client, admin, is_active="true"))["data"]}
    assert active_ids == {str(admin.user.id), str(active.id)}
    response = await client.get(USERS, params={"is_active": "maybe"}, headers=admin.headers)
    assert ["query", "is_active"] in detail_locs(assert_error(response, 422, "VALIDATION_ERROR"))


async def test_filters_combine(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    wanted = await make_user(app, email="combo1@example.com", role=Role.MODERATOR)
    await make_user(app, email="combo2@example.com", role=Role.MODERATOR, is_active=False)
    await make_user(app, email="combo3@example.com")
    page = await list_users(client, admin, q="combo", role="moderator", is_active="true")
    assert [u["id"] for u in page["data"]] == [str(wanted.id)]


# GET /users: sorting


async def test_sorts(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    # Created in this order; the first letters make the e-mail order the same under
    # any collation.
    created = [
        (await make_user(app, email=f"{name}@sort.example")).email
        for name in ("delta", "alpha", "echo", "charlie", "bravo")
    ]
    by_email = sorted(created)

    assert emails(await list_users(client, admin, q="sort.example")) == created[::-1]
    assert (
        emails(await list_users(client, admin, q="sort.example", sort="-created_at"))
        == (created[::-1])
    )
    assert emails(await list_users(client, admin, q="sort.example", sort="created_at")) == created
    assert emails(await list_users(client, admin, q="sort.example", sort="email")) == by_email
    assert (
        emails(await list_users(client, admin, q="sort.example", sort="-email")) == (by_email[::-1])
    )


@pytest.mark.parametrize("sort", ["role", "full_name", "-hashed_password", "--email", "id", ""])
async def test_unknown_sort_is_422(app: FastAPI, client: httpx.AsyncClient, sort: str) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.get(USERS, params={"sort": sort}, headers=admin.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert detail_locs(error) == [["query", "sort"]]


@pytest.mark.parametrize("limit", ["0", "101", "-1", "many"])
async def test_limit_out_of_range_is_422(
    app: FastAPI, client: httpx.AsyncClient, limit: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.get(USERS, params={"limit": limit}, headers=admin.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert detail_locs(error) == [["query", "limit"]]


async def test_limit_bounds_and_default(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 24, "bound")  # 25 users with the admin
    assert len((await list_users(client, admin))["data"]) == 20
    one = await list_users(client, admin, limit=1)
    assert len(one["data"]) == 1
    assert one["next_cursor"]
    hundred = await list_users(client, admin, limit=100)
    assert len(hundred["data"]) == 25
    assert hundred["next_cursor"] is None


# GET /users: paging


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "email", "-email"])
async def test_paging_returns_each_user_exactly_once(
    app: FastAPI, client: httpx.AsyncClient, sort: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 22, "page")
    expected = [u["id"] for u in (await list_users(client, admin, sort=sort, limit=100))["data"]]
    assert len(expected) == 23

    ids = await all_pages(client, admin, sort=sort, limit=5)

    assert ids == expected
    assert len(set(ids)) == 23


async def test_paging_with_a_filter_stays_within_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    wanted = await make_users(app, 7, "keep", role=Role.MODERATOR)
    await make_users(app, 7, "skip")
    ids = await all_pages(client, admin, role="moderator", limit=3, sort="email")
    assert sorted(ids) == sorted(str(i) for i in wanted)
    assert len(ids) == 7


@pytest.mark.parametrize("sort", ["-created_at", "created_at"])
async def test_rows_inserted_while_paging_neither_repeat_nor_hide_others(
    app: FastAPI, client: httpx.AsyncClient, sort: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    before = {str(i) for i in await make_users(app, 10, "early")} | {str(admin.user.id)}

    first = await list_users(client, admin, sort=sort, limit=4)
    await make_users(app, 5, "late")
    rest = await all_pages(client, admin, sort=sort, limit=4, cursor=first["next_cursor"])

    seen = [u["id"] for u in first["data"]] + rest
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


async def test_include_total(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 6, "total", role=Role.MODERATOR)
    await make_users(app, 3, "other")

    plain = await list_users(client, admin, limit=2)
    assert "total" not in plain
    page = await list_users(client, admin, limit=2, include_total="true")
    assert page["total"] == 10
    assert len(page["data"]) == 2
    # The total describes the whole filtered list, also on later pages.
    filtered = await list_users(client, admin, role="moderator", limit=4, include_total="true")
    assert filtered["total"] == 6
    later = await list_users(
        client,
        admin,
        role="moderator",
        limit=4,
        include_total="true",
        cursor=filtered["next_cursor"],
    )
    assert later["total"] == 6
    assert len(later["data"]) == 2
    assert later["next_cursor"] is None
    assert "total" not in await list_users(client, admin, include_total="false")


async def test_a_tampered_cursor_is_400(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 4, "cursor")
    cursor = (await list_users(client, admin, limit=2))["next_cursor"]
    assert isinstance(cursor, str)
    assert (await list_users(client, admin, limit=2, cursor=cursor))["data"]

    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]
    for bad in (flipped, cursor[:-2], cursor + "A", "not a cursor", "e30"):
        response = await client.get(
            USERS, params={"limit": 2, "cursor": bad}, headers=admin.headers
        )
        assert_error(response, 400, "BAD_REQUEST")


async def test_a_cursor_made_for_another_sort_is_400(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 4, "cursor")
    cursor = (await list_users(client, admin, limit=2, sort="email"))["next_cursor"]
    response = await client.get(
        USERS, params={"limit": 2, "cursor": cursor, "sort": "-email"}, headers=admin.headers
    )
    assert_error(response, 400, "BAD_REQUEST")


async def test_a_page_costs_the_same_statements_whatever_its_size(
    app: FastAPI, client: httpx.AsyncClient, count_queries: StatementCounter
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_users(app, 60, "budget")

    costs: dict[int, int] = {}
    for limit in (5, 20, 50):
        count_queries.reset()
        page = await list_users(client, admin, limit=limit)
        assert len(page["data"]) == limit
        costs[limit] = count_queries.count
    count_queries.reset()
    page = await list_users(client, admin, limit=50, cursor=page["next_cursor"])
    assert len(page["data"]) == 11
    costs[-1] = count_queries.count

    assert len(set(costs.values())) == 1, (costs, count_queries.statements)
    # One SELECT for the page; the access token is checked without the database.
    assert costs[5] <= 2, count_queries.statements
    count_queries.reset()
    await list_users(client, admin, limit=50, include_total="true")
    assert count_queries.count == costs[5] + 1, count_queries.statements


# POST /users


async def test_an_admin_creates_a_user(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)

    response = await client.post(
        USERS,
        json={"email": "Created@Example.COM", "password": "a good new passphrase"},
        headers=admin.headers,
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == USER_FIELDS
    assert body["email"] == "created@example.com"
    assert body["full_name"] is None
    assert body["role"] == "user"
    assert body["is_active"] is True
    assert body["is_verified"] is False
    assert await stored(client, admin, body["id"]) == body
    signed = await login(client, "created@example.com", "a good new passphrase")
    assert signed.status_code == 200, signed.text
    assert claims(signed.json()["access_token"])["sub"] == body["id"]


async def test_create_honours_role_and_flags(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)

    moderator = await client.post(
        USERS,
        json={
            "email": "mod@example.com",
            "password": "a good new passphrase",
            "full_name": "Mo Derator",
            "role": "moderator",
            "is_verified": True,
        },
        headers=admin.headers,
    )
    inactive = await client.post(
        USERS,
        json={"email": "off@example.com", "password": "a good new passphrase", "is_active": False},
        headers=admin.headers,
    )

    assert moderator.status_code == 201, moderator.text
    assert {k: moderator.json()[k] for k in ("full_name", "role", "is_active", "is_verified")} == {
        "full_name": "Mo Derator",
        "role": "moderator",
        "is_active": True,
        "is_verified": True,
    }
    token = (await login(client, "mod@example.com", "a good new passphrase")).json()["access_token"]
    assert claims(token)["role"] == "moderator"
    listed = await client.get(USERS, headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    assert inactive.status_code == 201, inactive.text
    assert inactive.json()["is_active"] is False
    assert_invalid_grant(await login(client, "off@example.com", "a good new passphrase"))


async def test_an_admin_creates_an_admin(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.post(
        USERS,
        json={
            "email": "second-admin@example.com",
            "password": "a good new passphrase",
            "role": "admin",
        },
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    # Now there are two active admins, so the first may step down.
    demoted = await client.patch(
        f"{USERS}/{admin.user.id}", json={"role": "user"}, headers=admin.headers
    )
    assert demoted.status_code == 200, demoted.text


async def test_create_with_a_taken_email_in_another_case_is_409(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    existing = await make_user(app, email="dup@example.com", full_name="Original")

    response = await client.post(
        USERS,
        json={"email": "DUP@example.com", "password": "a good new passphrase", "full_name": "Copy"},
        headers=admin.headers,
    )

    assert_error(response, 409, "CONFLICT")
    assert (await stored(client, admin, existing.id))["full_name"] == "Original"
    assert (await list_users(client, admin, q="dup@"))["data"][0]["id"] == str(existing.id)
    assert len((await list_users(client, admin, q="dup@"))["data"]) == 1


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("short", id="too-short"),
        pytest.param("y" * 129, id="too-long"),
        pytest.param("iloveyou1", id="common"),
        pytest.param("newbie-rocks-2024", id="contains-local-part"),
    ],
)
async def test_create_with_a_bad_password_is_422(
    app: FastAPI, client: httpx.AsyncClient, password: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.post(
        USERS, json={"email": "newbie@example.com", "password": password}, headers=admin.headers
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", "password"] in detail_locs(error)
    assert (await list_users(client, admin, q="newbie"))["data"] == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"email": "x@example.com", "password": "a good new passphrase", "id": UNKNOWN_ID}, "id"),
        ({"email": "x@example.com", "password": "a good new passphrase", "role": "root"}, "role"),
        ({"email": "not-an-email", "password": "a good new passphrase"}, "email"),
        ({"email": "x@example.com"}, "password"),
        ({"password": "a good new passphrase"}, "email"),
    ],
)
async def test_create_with_an_invalid_body_is_422(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], loc: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.post(USERS, json=body, headers=admin.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", loc] in detail_locs(error)
    assert_invalid_grant(await login(client, "x@example.com", "a good new passphrase"))


# PATCH one user by id


async def test_an_admin_changes_a_users_fields(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await make_user(app, full_name="Before", is_verified=False)

    response = await client.patch(
        f"{USERS}/{target.id}",
        json={"full_name": "After", "is_verified": True},
        headers=admin.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "After"
    assert response.json()["is_verified"] is True
    after = await stored(client, admin, target.id)
    assert after["full_name"] == "After"
    assert after["is_verified"] is True
    assert after["role"] == "user"
    assert after["email"] == target.email


async def test_an_admin_changes_a_users_email(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await make_user(app)
    response = await client.patch(
        f"{USERS}/{target.id}", json={"email": "Moved@Example.com"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "moved@example.com"
    assert (await login(client, "MOVED@example.com")).status_code == 200
    assert_invalid_grant(await login(client, target.email))


async def test_admin_email_change_to_a_taken_address_is_409(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    await make_user(app, email="occupied@example.com")
    target = await make_user(app)
    response = await client.patch(
        f"{USERS}/{target.id}", json={"email": "Occupied@example.com"}, headers=admin.headers
    )
    assert_error(response, 409, "CONFLICT")
    assert (await stored(client, admin, target.id))["email"] == target.email


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"password": "a good new passphrase"}, "password"),
        ({"hashed_password": "x"}, "hashed_password"),
        ({"role": "root"}, "role"),
        ({"is_active": "sometimes"}, "is_active"),
    ],
)
async def test_admin_patch_with_an_invalid_body_is_422(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], loc: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await make_user(app, full_name="Target")
    response = await client.patch(
        f"{USERS}/{target.id}", json={"full_name": "Changed", **body}, headers=admin.headers
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", loc] in detail_locs(error)
    after = await stored(client, admin, target.id)
    assert after["full_name"] == "Target"
    assert after["role"] == "user"
    assert after["is_active"] is True


async def test_deactivation_ends_the_users_sessions_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await signed_in(app, client)
    assert (await client.get(ME, headers=target.headers)).status_code == 200

    response = await client.patch(
        f"{USERS}/{target.user.id}", json={"is_active": False}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    assert_invalid_token(await client.get(ME, headers=target.headers))
    assert_invalid_grant(await refresh(client, target.refresh_token))
    assert_invalid_grant(await login(client, target.user.email))
    assert (await stored(client, admin, target.user.id))["is_active"] is False
    # The admin's own session is untouched.
    assert (await client.get(ME, headers=admin.headers)).status_code == 200

    # Reactivated, the user may sign in again (the old session stays ended).
    again = await client.patch(
        f"{USERS}/{target.user.id}", json={"is_active": True}, headers=admin.headers
    )
    assert again.status_code == 200, again.text
    assert_invalid_token(await client.get(ME, headers=target.headers))
    assert (await login(client, target.user.email)).status_code == 200


async def test_role_change_takes_effect(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await signed_in(app, client)
    assert claims(target.access_token)["role"] == "user"
    assert_error(await client.get(USERS, headers=target.headers), 403, "FORBIDDEN")

    response = await client.patch(
        f"{USERS}/{target.user.id}", json={"role": "moderator"}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["role"] == "moderator"
    # The old token carried the old role: it stops working.
    assert_invalid_token(await client.get(ME, headers=target.headers))
    assert_invalid_grant(await refresh(client, target.refresh_token))
    # A new login carries the new role, and the role's permissions apply.
    relogin = await login(client, target.user.email)
    assert relogin.status_code == 200, relogin.text
    token = relogin.json()["access_token"]
    assert claims(token)["role"] == "moderator"
    listed = await client.get(USERS, headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text


async def test_demoting_an_admin_takes_their_powers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    other = await signed_in(app, client, Role.ADMIN)

    response = await client.patch(
        f"{USERS}/{other.user.id}", json={"role": "user"}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["role"] == "user"
    assert_invalid_token(await client.get(USERS, headers=other.headers))
    relogin = await login(client, other.user.email)
    token = relogin.json()["access_token"]
    assert claims(token)["role"] == "user"
    forbidden = await client.get(USERS, headers={"Authorization": f"Bearer {token}"})
    assert_error(forbidden, 403, "FORBIDDEN")
    # The admin who remains is now the last one.
    last = await client.patch(
        f"{USERS}/{admin.user.id}", json={"role": "user"}, headers=admin.headers
    )
    assert_error(last, 409, "CONFLICT")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"role": "user", "is_active": True}, id="same-role"),
        pytest.param({"role": None, "is_active": None, "is_verified": None}, id="nulls"),
    ],
)
async def test_a_change_that_is_not_a_role_change_keeps_sessions(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    target = await signed_in(app, client)
    response = await client.patch(
        f"{USERS}/{target.user.id}", json={"full_name": "Renamed", **body}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Renamed"
    assert response.json()["role"] == "user"
    assert response.json()["is_active"] is True
    assert (await client.get(ME, headers=target.headers)).status_code == 200
    assert (await refresh(client, target.refresh_token)).status_code == 200


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("PATCH", {"role": "moderator"}, id="demote-to-moderator"),
        pytest.param("PATCH", {"role": "user"}, id="demote-to-user"),
        pytest.param("PATCH", {"is_active": False}, id="deactivate"),
        pytest.param("PATCH", {"role": None}, id="null-role"),
        pytest.param("DELETE", None, id="delete"),
    ],
)
async def test_the_last_active_admin_cannot_be_removed(
    app: FastAPI, client: httpx.AsyncClient, method: str, body: dict[str, Any] | None
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    # Neither an inactive admin nor a moderator counts as another admin.
    await make_user(app, role=Role.ADMIN, is_active=False)
    await make_user(app, role=Role.MODERATOR)

    response = await client.request(
        method, f"{USERS}/{admin.user.id}", json=body, headers=admin.headers
    )

    if body == {"role": None}:
        # Not a role at all: no change, so nothing to refuse (and nothing ends).
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 409, "CONFLICT")
    after = await stored(client, admin, admin.user.id)
    assert after["role"] == "admin"
    assert after["is_active"] is True
    # The admin's session did not end either.
    assert (await client.get(ME, headers=admin.headers)).status_code == 200
    assert (await login(client, admin.user.email)).status_code == 200


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("PATCH", {"role": "user"}, id="demote"),
        pytest.param("PATCH", {"is_active": False}, id="deactivate"),
        pytest.param("DELETE", None, id="delete"),
    ],
)
async def test_two_admins_removing_each_other_at_once_leave_one(
    app: FastAPI, client: httpx.AsyncClient, method: str, body: dict[str, Any] | None
) -> None:
    first = await signed_in(app, client, Role.ADMIN)
    second = await signed_in(app, client, Role.ADMIN)
    responses: dict[str, httpx.Response] = {}

    async def remove(who: SignedIn, whom: SignedIn) -> None:
        # No assertion here: a failing task would cancel the other mid-transaction.
        responses[who.user.email] = await client.request(
            method, f"{USERS}/{whom.user.id}", json=body, headers=who.headers
        )

    async with anyio.create_task_group() as group:
        group.start_soon(remove, first, second)
        group.start_soon(remove, second, first)

    statuses = sorted(response.status_code for response in responses.values())
    # One wins. The other is refused by the last-admin rule (409) when both reached the
    # database together, or, when the winner committed before the loser's request was
    # authenticated, by its own ended session (401): removing an admin ends its sessions.
    won = 200 if method == "PATCH" else 204
    assert statuses in ([won, 409], [won, 401]), statuses
    moderator = await signed_in(app, client, Role.MODERATOR)
    admins = await list_users(client, moderator, role="admin", is_active="true")
    assert len(admins["data"]) == 1


async def test_with_two_admins_one_may_be_deactivated_or_deleted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    second = await make_user(app, role=Role.ADMIN)
    third = await make_user(app, role=Role.ADMIN)

    deactivated = await client.patch(
        f"{USERS}/{second.id}", json={"is_active": False}, headers=admin.headers
    )
    assert deactivated.status_code == 200, deactivated.text
    deleted = await client.delete(f"{USERS}/{third.id}", headers=admin.headers)
    assert deleted.status_code == 204, deleted.text
    # Now only the caller is an active admin.
    assert_error(
        await client.delete(f"{USERS}/{admin.user.id}", headers=admin.headers), 409, "CONFLICT"
    )


# DELETE one user by id


async def test_an_admin_deletes_a_user(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    # A moderator: GET /users does not load the caller's account, so a 401 there shows
    # the session itself has ended.
    target = await signed_in(app, client, Role.MODERATOR)
    bystander = await signed_in(app, client)
    assert (await client.get(USERS, headers=target.headers)).status_code == 200

    response = await client.delete(f"{USERS}/{target.user.id}", headers=admin.headers)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_error(
        await client.get(f"{USERS}/{target.user.id}", headers=admin.headers), 404, "NOT_FOUND"
    )
    assert_invalid_token(await client.get(ME, headers=target.headers))
    assert_invalid_token(await client.get(USERS, headers=target.headers))
    assert_invalid_grant(await refresh(client, target.refresh_token))
    assert_invalid_grant(await login(client, target.user.email))
    assert (await client.get(ME, headers=bystander.headers)).status_code == 200
    ids = {u["id"] for u in (await list_users(client, admin))["data"]}
    assert ids == {str(admin.user.id), str(bystander.user.id)}
    # Deleting it again finds nothing.
    again = await client.delete(f"{USERS}/{target.user.id}", headers=admin.headers)
    assert_error(again, 404, "NOT_FOUND")
