"""API keys: made here, shown once, stored as SHA-256 hashes with a role."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

Role = Literal["admin", "client"]
PREFIX = "rs_"


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored key, without its secret."""

    id: int
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None
    signed: bool = False  # its submissions must be signed (service.signing)

    @property
    def revoked(self) -> bool:
        """True once the key was revoked."""
        return self.revoked_at is not None


def digest(key: str) -> bytes:
    """The stored form of a key. Keys are long random tokens, so a plain hash suffices."""
    return hashlib.sha256(key.encode()).digest()


def generate() -> str:
    """A new random key."""
    return PREFIX + secrets.token_urlsafe(32)


class StoredKey(msgspec.Struct, frozen=True):
    """What a request's key allows: its role, and the secret its submissions are signed with."""

    role: Role
    signing_secret: str | None = None


async def store(
    conn: asyncpg.Connection | asyncpg.Pool,
    key: str,
    role: Role,
    name: str,
    signing_secret: str | None = None,
) -> int:
    """Store a key's hash (idempotent for the same key); return its id."""
    row_id: int = await conn.fetchval(
        "INSERT INTO api_keys (key_hash, role, name, signing_secret) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (key_hash) DO UPDATE SET role = EXCLUDED.role, revoked_at = NULL, "
        "signing_secret = EXCLUDED.signing_secret "
        "RETURNING id",
        digest(key),
        role,
        name,
        signing_secret,
    )
    return row_id


async def count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """How many keys exist, revoked or not."""
    n: int = await conn.fetchval("SELECT count(*) FROM api_keys")
    return n


async def lookup(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> StoredKey | None:
    """Role and signing secret of a live key, or None."""
    row = await conn.fetchrow(
        "SELECT role, signing_secret FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        digest(key),
    )
    return None if row is None else StoredKey(row["role"], row["signing_secret"])


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[KeyInfo]:
    """Every key, oldest first, without secrets."""
    rows = await conn.fetch(
        "SELECT id, role, name, created_at, revoked_at, signing_secret IS NOT NULL AS signed "
        "FROM api_keys ORDER BY id"
    )
    return [
        KeyInfo(
            id=r["id"],
            role=r["role"],
            name=r["name"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
            signed=r["signed"],
        )
        for r in rows
    ]


async def revoke(conn: asyncpg.Connection | asyncpg.Pool, key_id: int) -> bool | None:
    """Revoke a key by id: True if revoked now, False if it already was, None if unknown.
    API processes refuse it once their key cache forgets it (`key_cache_ttl_s`)."""
    status: str | None = await conn.fetchval(
        """
        WITH k AS (SELECT id, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE),
             u AS (UPDATE api_keys SET revoked_at = now()
                   WHERE id = $1 AND revoked_at IS NULL RETURNING id)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM u) THEN 'revoked'
                    WHEN EXISTS (SELECT 1 FROM k) THEN 'already' END
        """,
        key_id,
    )
    return None if status is None else status == "revoked"
