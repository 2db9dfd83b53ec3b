"""Who is calling: API keys from `Authorization: Bearer`, resolved to a role and cached."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import asyncpg

from service import apikeys, signing
from service.problems import Problem

Need = Literal["reader", "client", "admin"]
CACHE_TTL_S = 30.0
_RANK = {"reader": 0, "client": 1, "admin": 2}
_BOOTSTRAP = apikeys.StoredKey("admin")


class KeyCache:
    """Key -> role (or None), remembered for a short while so each request costs no query."""

    def __init__(
        self, pg: asyncpg.Pool, bootstrap_admin_key: str = "", ttl_s: float = CACHE_TTL_S
    ) -> None:
        self._pg = pg
        self._ttl_s = ttl_s
        self._bootstrap = bootstrap_admin_key
        self._cache: dict[str, tuple[float, apikeys.StoredKey | None]] = {}
        self._lookups: dict[str, asyncio.Task[apikeys.StoredKey | None]] = {}

    async def stored(self, key: str) -> apikeys.StoredKey | None:
        """Role and signing secret of a live key, or None."""
        if self._bootstrap and key == self._bootstrap:
            return _BOOTSTRAP
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        # One lookup per key at a time: a game server's key is in every one of its
        # concurrent requests, which would otherwise all query Postgres when it expires.
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        return await asyncio.shield(lookup)  # a caller that gives up leaves it to the rest

    async def _lookup(self, key: str) -> apikeys.StoredKey | None:
        now = time.monotonic()
        found = await apikeys.lookup(self._pg, key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, found)
        return found

    async def role(self, key: str) -> apikeys.Role | None:
        """The role of a live key, or None."""
        found = await self.stored(key)
        return None if found is None else found.role

    def forget(self) -> None:
        """Drop every remembered key (this process only; others wait out the TTL)."""
        self._cache.clear()


def bearer(headers: Any) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, if any."""
    value: str | None = headers.get("authorization")
    if not value:
        return None
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


async def authorize(keys: KeyCache, headers: Any, need: Need, public_reads: bool) -> str:
    """The caller's role if it may do what needs `need`; 401/403 problem otherwise."""
    key = bearer(headers)
    if key is None:
        if need == "reader" and public_reads:
            return "reader"
        raise Problem(
            401,
            "Unauthorized",
            "send an API key as Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    role = await keys.role(key)
    if role is None:
        raise Problem(
            401, "Unauthorized", "the API key is unknown or revoked",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    if _RANK[role] < _RANK[need]:
        raise Problem(403, "Forbidden", f"this route needs the {need} role; the key is {role}")
    return role


async def check_signature(keys: KeyCache, headers: Any, body: bytes) -> None:
    """A key with a signing secret must sign the body (service.signing): 401 otherwise."""
    key = bearer(headers)
    found = None if key is None else await keys.stored(key)
    if found is None or found.signing_secret is None:
        return
    try:
        signing.verify(found.signing_secret, headers, body, time.time())
    except signing.BadSignature as exc:
        raise Problem(
            401, "Bad signature", f"{exc.header}: {exc}", field=exc.header,
            headers={"WWW-Authenticate": "Bearer"},
        ) from None  # fmt: skip
