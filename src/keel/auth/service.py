"""Account rules: registration, password sign-in, e-mail verification, password reset."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.exc import IntegrityError

from keel.auth import jobs, repository
from keel.auth.one_time import issue_one_time_token, verify_email_lifetime
from keel.auth.repository import UserRow
from keel.auth.revocation import SessionRevocations
from keel.auth.schemas import TokenPair
from keel.auth.sessions import Client, InvalidGrant, Issuer, end_sessions, start_session
from keel.config import Settings
from keel.core.db import Database, Unit
from keel.core.errors import (
    DEPENDENCY_DOWN_ERRORS,
    BadRequest,
    Conflict,
    Forbidden,
    ValidationFailed,
)
from keel.core.jobs import JobQueue, enqueue_after_commit
from keel.core.security.opaque import token_hash
from keel.core.security.passwords import PasswordHasher, password_problem
from keel.models import OneTimePurpose, Role
from keel.models.base import utcnow

log = structlog.get_logger("keel.auth")


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_password_policy(password: str, email: str, field: str = "password") -> None:
    problem = password_problem(password, email)
    if problem:
        raise ValidationFailed(
            problem, details=[{"loc": ["body", field], "msg": problem, "type": "password_policy"}]
        )


async def create_user(
    db: Unit,
    passwords: PasswordHasher,
    *,
    email: str,
    password: str,
    full_name: str | None = None,
    role: Role = Role.USER,
    is_active: bool = True,
    is_verified: bool = False,
) -> UserRow:
    email = normalise_email(email)
    check_password_policy(password, email)
    values = {
        "email": email,
        "hashed_password": await passwords.hash(password),
        "full_name": full_name,
        "role": role,
        "is_active": is_active,
        "is_verified": is_verified,
    }
    try:
        # The unique index decides races: one insert wins, the others get 409.
        return await repository.add_user(db, values)
    except IntegrityError as exc:
        raise Conflict("An account with this e-mail already exists") from exc


async def register(
    db: Unit,
    passwords: PasswordHasher,
    jobs_queue: JobQueue,
    settings: Settings,
    *,
    email: str,
    password: str,
    full_name: str | None,
) -> UserRow:
    if not settings.auth.registration_open:
        raise Forbidden("Registration is closed")
    user = await create_user(db, passwords, email=email, password=password, full_name=full_name)
    await welcome(db, jobs_queue, settings, user)
    return user


async def password_grant(
    db: Unit,
    passwords: PasswordHasher,
    issuer: Issuer,
    email: str,
    password: str,
    client: Client,
) -> TokenPair:
    user = await repository.find_user_by_email(db, normalise_email(email))
    # An unknown e-mail still costs a hash: the timing does not tell who has an account.
    matches, new_hash = await passwords.verify(password, user["hashed_password"] if user else None)
    if user is None or not matches:
        raise InvalidGrant("wrong e-mail or password")
    if not user["is_active"]:
        raise InvalidGrant("user inactive")
    if new_hash is not None:
        await repository.update_user(db, user["id"], {"hashed_password": new_hash})
        log.info("password_hash_upgraded", user_id=str(user["id"]))
    return await start_session(db, issuer, user, client)


async def welcome(db: Unit, jobs_queue: JobQueue, settings: Settings, user: UserRow) -> None:
    """The welcome e-mail, with a verification link unless the account is verified."""
    token = None
    if not user["is_verified"]:
        token = await issue_one_time_token(
            db, user, OneTimePurpose.VERIFY_EMAIL, verify_email_lifetime(settings)
        )
    enqueue_after_commit(db, jobs_queue, jobs.send_welcome.call(email=user["email"], token=token))


async def send_verification(
    db: Unit, jobs_queue: JobQueue, settings: Settings, user: UserRow
) -> None:
    if user["is_verified"]:
        return
    token = await issue_one_time_token(
        db, user, OneTimePurpose.VERIFY_EMAIL, verify_email_lifetime(settings)
    )
    enqueue_after_commit(
        db, jobs_queue, jobs.send_verification.call(email=user["email"], token=token)
    )


async def _redeem(db: Unit, token: str, purpose: OneTimePurpose) -> UserRow:
    """Spend a one-time token (once, atomically) and return its user; 400 otherwise."""
    spent = await repository.redeem_one_time_token(db, token_hash(token), purpose, utcnow())
    user = await repository.find_user(db, spent["user_id"]) if spent else None
    # A token for an address the account no longer has verifies nothing.
    if spent is None or user is None or user["email"] != spent["email"]:
        raise BadRequest("The token is invalid, used or expired")
    return user


async def verify_email(db: Unit, token: str) -> None:
    spent = await repository.redeem_one_time_token(
        db, token_hash(token), OneTimePurpose.VERIFY_EMAIL, utcnow()
    )
    # A token for an address the account no longer has verifies nothing.
    if spent is None or not await repository.verify_address(db, spent["user_id"], spent["email"]):
        raise BadRequest("The token is invalid, used or expired")


async def set_password(
    db: Unit,
    passwords: PasswordHasher,
    jobs_queue: JobQueue,
    revocations: SessionRevocations,
    user: UserRow,
    new_password: str,
    *,
    keep_session: uuid.UUID | None = None,
    field: str = "new_password",
) -> None:
    """Change the password, end the user's sessions (all but `keep_session`), notify."""
    check_password_policy(new_password, user["email"], field)
    await repository.update_user(
        db,
        user["id"],
        {"hashed_password": await passwords.hash(new_password), "password_changed_at": utcnow()},
    )
    condition = repository.of_user(user["id"])
    if keep_session is not None:
        condition = condition & ~repository.the_session(keep_session)
    await end_sessions(db, revocations, condition, "password_changed")
    enqueue_after_commit(db, jobs_queue, jobs.send_password_changed.call(email=user["email"]))


async def reset_password(
    db: Unit,
    passwords: PasswordHasher,
    jobs_queue: JobQueue,
    revocations: SessionRevocations,
    token: str,
    new_password: str,
) -> None:
    user = await _redeem(db, token, OneTimePurpose.RESET_PASSWORD)
    await set_password(db, passwords, jobs_queue, revocations, user, new_password)


async def ensure_first_admin(
    database: Database, passwords: PasswordHasher, settings: Settings
) -> None:
    """Create KEEL_FIRST_ADMIN_EMAIL as an admin when no admin exists yet."""
    first = settings.first_admin
    if not first.email or first.password is None:
        return
    try:
        created = await _create_first_admin(
            database, passwords, first.email, first.password.get_secret_value()
        )
    except DEPENDENCY_DOWN_ERRORS as exc:
        # Not fatal: the next start tries again, and /ready reports the database.
        log.warning("first_admin_not_created", reason="database unavailable", error=repr(exc))
        return
    if created:
        log.info("first_admin_created", email=normalise_email(first.email))


async def _create_first_admin(
    database: Database, passwords: PasswordHasher, email: str, password: str
) -> bool:
    try:
        async with database.transaction() as db:
            if await repository.any_admin(db):
                return False
            await create_user(
                db, passwords, email=email, password=password, role=Role.ADMIN, is_verified=True
            )
    except Conflict:
        # Another worker created it first, or the address belongs to a user.
        log.warning("first_admin_not_created", reason="email exists")
        return False
    return True
