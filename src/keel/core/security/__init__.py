"""Credentials: password hashing, opaque tokens, signing keys and access tokens."""
