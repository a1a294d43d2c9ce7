"""Shared infrastructure: each module a small piece with a narrow interface."""
