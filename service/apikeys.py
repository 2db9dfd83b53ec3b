"""API keys: made here, shown once, stored as SHA-256 hashes with a role."""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

import asyncpg
import msgspec

Role = Literal["admin", "client"]
PREFIX = "rs_"


class KeyInfo(msgspec.Struct, frozen=True):
    """A stored key, without its secret."""

    id: int
    role: Role
    name: str
    revoked: bool


def digest(key: str) -> bytes:
    """The stored form of a key. Keys are long random tokens, so a plain hash suffices."""
    return hashlib.sha256(key.encode()).digest()


def generate() -> str:
    """A new random key."""
    return PREFIX + secrets.token_urlsafe(32)


async def store(conn: asyncpg.Connection | asyncpg.Pool, key: str, role: Role, name: str) -> int:
    """Store a key's hash (idempotent for the same key); return its id."""
    row_id: int = await conn.fetchval(
        "INSERT INTO api_keys (key_hash, role, name) VALUES ($1, $2, $3) "
        "ON CONFLICT (key_hash) DO UPDATE SET role = EXCLUDED.role, revoked_at = NULL "
        "RETURNING id",
        digest(key),
        role,
        name,
    )
    return row_id


async def count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """How many keys exist, revoked or not."""
    n: int = await conn.fetchval("SELECT count(*) FROM api_keys")
    return n


async def lookup(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> Role | None:
    """The role of a live key, or None."""
    role: Role | None = await conn.fetchval(
        "SELECT role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest(key)
    )
    return role
