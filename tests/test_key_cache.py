"""The API key cache: one Postgres lookup per key however many requests carry it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service import apikeys, auth
from service.connections import pg_pool
from service.settings import Settings


async def test_concurrent_requests_with_one_key_share_one_lookup(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await pg_pool(settings)
    try:
        await apikeys.store(pool, "server-key", "client", "a game server")
        calls: list[str] = []
        real = apikeys.lookup

        async def counted(pg: Any, key: str) -> Any:
            calls.append(key)
            await asyncio.sleep(0.05)  # a lookup in flight while the others arrive
            return await real(pg, key)

        monkeypatch.setattr(apikeys, "lookup", counted)
        cache = auth.KeyCache(pool, ttl_s=0.2)
        roles = await asyncio.gather(*(cache.role("server-key") for _ in range(32)))
        assert roles == ["client"] * 32
        assert calls == ["server-key"]
        assert await cache.role("unknown-key") is None
        assert calls == ["server-key", "unknown-key"]
        await asyncio.sleep(0.25)  # expired: looked up again, once
        roles = await asyncio.gather(*(cache.role("server-key") for _ in range(8)))
        assert roles == ["client"] * 8
        assert calls == ["server-key", "unknown-key", "server-key"]
    finally:
        await pool.close()
