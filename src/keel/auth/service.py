"""Account rules: registration, password sign-in, e-mail verification, password reset."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth import jobs
from keel.auth.one_time import issue_one_time_token, verify_email_lifetime
from keel.auth.schemas import TokenPair
from keel.auth.sessions import Client, InvalidGrant, end_sessions, start_session
from keel.core.errors import (
    DEPENDENCY_DOWN_ERRORS,
    BadRequest,
    Conflict,
    Forbidden,
    ValidationFailed,
)
from keel.core.jobs import enqueue_after_commit
from keel.core.resources import Resources
from keel.core.security.opaque import token_hash
from keel.core.security.passwords import PasswordHasher, password_problem
from keel.models import AuthSession, OneTimePurpose, OneTimeToken, Role, User
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
    passwords: PasswordHasher,
    session: AsyncSession,
    *,
    email: str,
    password: str,
    full_name: str | None = None,
    role: Role = Role.USER,
    is_active: bool = True,
    is_verified: bool = False,
) -> User:
    email = normalise_email(email)
    check_password_policy(password, email)
    user = User(
        email=email,
        hashed_password=await passwords.hash(password),
        full_name=full_name,
        role=role,
        is_active=is_active,
        is_verified=is_verified,
    )
    session.add(user)
    try:
        # The unique index decides races: one insert wins, the others get 409.
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("An account with this e-mail already exists") from exc
    return user


async def register(
    resources: Resources,
    session: AsyncSession,
    *,
    email: str,
    password: str,
    full_name: str | None,
) -> User:
    if not resources.settings.auth.registration_open:
        raise Forbidden("Registration is closed")
    user = await create_user(
        resources.passwords, session, email=email, password=password, full_name=full_name
    )
    await welcome(resources, session, user)
    return user


async def password_grant(
    resources: Resources, session: AsyncSession, email: str, password: str, client: Client
) -> TokenPair:
    user = (
        await session.execute(select(User).where(User.email == normalise_email(email)))
    ).scalar_one_or_none()
    # An unknown e-mail still costs a hash: the timing does not tell who has an account.
    matches, new_hash = await resources.passwords.verify(
        password, user.hashed_password if user else None
    )
    if user is None or not matches:
        raise InvalidGrant("wrong e-mail or password")
    if not user.is_active:
        raise InvalidGrant("user inactive")
    if new_hash is not None:
        user.hashed_password = new_hash
        log.info("password_hash_upgraded", user_id=str(user.id))
    return await start_session(resources, session, user, client)


async def welcome(resources: Resources, session: AsyncSession, user: User) -> None:
    """The welcome e-mail, with a verification link unless the account is verified."""
    token = None
    if not user.is_verified:
        token = await issue_one_time_token(
            session, user, OneTimePurpose.VERIFY_EMAIL, verify_email_lifetime(resources.settings)
        )
    enqueue_after_commit(
        session, resources.jobs, jobs.send_welcome.call(email=user.email, token=token)
    )


async def send_verification(resources: Resources, session: AsyncSession, user: User) -> None:
    if user.is_verified:
        return
    token = await issue_one_time_token(
        session, user, OneTimePurpose.VERIFY_EMAIL, verify_email_lifetime(resources.settings)
    )
    enqueue_after_commit(
        session, resources.jobs, jobs.send_verification.call(email=user.email, token=token)
    )


async def _redeem(session: AsyncSession, token: str, purpose: OneTimePurpose) -> User:
    """Spend a one-time token (once, atomically) and return its user; 400 otherwise."""
    now = utcnow()
    spent = await session.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.token_hash == token_hash(token),
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(OneTimeToken.user_id, OneTimeToken.email)
        .execution_options(synchronize_session=False)
    )
    row = spent.first()
    user = await session.get(User, row.user_id) if row else None
    # A token for an address the account no longer has verifies nothing.
    if row is None or user is None or user.email != row.email:
        raise BadRequest("The token is invalid, used or expired")
    return user


async def verify_email(session: AsyncSession, token: str) -> None:
    user = await _redeem(session, token, OneTimePurpose.VERIFY_EMAIL)
    user.is_verified = True


async def set_password(
    resources: Resources,
    session: AsyncSession,
    user: User,
    new_password: str,
    *,
    keep_session: uuid.UUID | None = None,
    field: str = "new_password",
) -> None:
    """Change the password, end the user's sessions (all but `keep_session`), notify."""
    check_password_policy(new_password, user.email, field)
    user.hashed_password = await resources.passwords.hash(new_password)
    user.password_changed_at = utcnow()
    condition = AuthSession.user_id == user.id
    if keep_session is not None:
        condition = condition & (AuthSession.id != keep_session)
    await end_sessions(resources, session, condition, "password_changed")
    enqueue_after_commit(session, resources.jobs, jobs.send_password_changed.call(email=user.email))


async def reset_password(
    resources: Resources, session: AsyncSession, token: str, new_password: str
) -> None:
    user = await _redeem(session, token, OneTimePurpose.RESET_PASSWORD)
    await set_password(resources, session, user, new_password)


async def ensure_first_admin(resources: Resources) -> None:
    """Create KEEL_FIRST_ADMIN_EMAIL as an admin when no admin exists yet."""
    first = resources.settings.first_admin
    if not first.email or first.password is None:
        return
    try:
        await _create_first_admin(resources, first.email, first.password.get_secret_value())
    except DEPENDENCY_DOWN_ERRORS as exc:
        # Not fatal: the next start tries again, and /ready reports the database.
        log.warning("first_admin_not_created", reason="database unavailable", error=repr(exc))


async def _create_first_admin(resources: Resources, email: str, password: str) -> None:
    async with resources.sessionmaker() as session:
        has_admin = await session.scalar(select(exists().where(User.role == Role.ADMIN)))
        if has_admin:
            return
        try:
            await create_user(
                resources.passwords,
                session,
                email=email,
                password=password,
                role=Role.ADMIN,
                is_verified=True,
            )
            await session.commit()
        except Conflict:
            # Another worker created it first, or the address belongs to a user.
            await session.rollback()
            log.warning("first_admin_not_created", reason="email exists")
            return
    log.info("first_admin_created", email=normalise_email(email))
