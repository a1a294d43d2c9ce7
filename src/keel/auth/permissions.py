"""What each role may do: the one table every permission check reads."""

from __future__ import annotations

import enum

from keel.models.user import Role


class Permission(enum.StrEnum):
    USERS_READ = "users:read"  # list and read any user
    USERS_MANAGE = "users:manage"  # create, change, deactivate and delete users
    ITEMS_READ_ANY = "items:read_any"  # read items of any owner
    ITEMS_WRITE_ANY = "items:write_any"  # change items of any owner
    FILES_READ_ANY = "files:read_any"  # read and link files of any owner
    FILES_WRITE_ANY = "files:write_any"  # delete files of any owner


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.USER: frozenset(),
    Role.MODERATOR: frozenset(
        {Permission.USERS_READ, Permission.ITEMS_READ_ANY, Permission.FILES_READ_ANY}
    ),
    Role.ADMIN: frozenset(Permission),
}


def role_allows(role: Role | str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(Role(role), frozenset())
