"""Opaque secrets (refresh tokens, API keys, one-time tokens): made random, stored hashed.

They carry 256 bits of entropy, so a fast hash is enough to store them: unlike
passwords, nobody can guess one, and SHA-256 lets the database find a token by its hash.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
