"""Dependency checks behind the readiness endpoint."""

from __future__ import annotations

import asyncio

import msgspec

from service.state import Services

CHECK_TIMEOUT_S = 2.0


class Readiness(msgspec.Struct, frozen=True):
    """Each dependency's state; `down` lists what failed."""

    status: str
    redis: str
    postgres: str
    down: list[str]


async def _redis_ok(services: Services) -> bool:
    try:
        return bool(await asyncio.wait_for(services.redis.ping(), CHECK_TIMEOUT_S))
    except Exception:
        return False


async def _postgres_ok(services: Services) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), services.pg.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception:
        return False


async def check_ready(services: Services) -> Readiness:
    """Ask Redis and PostgreSQL for real, in parallel."""
    redis_ok, pg_ok = await asyncio.gather(_redis_ok(services), _postgres_ok(services))
    down = [name for name, ok in (("redis", redis_ok), ("postgres", pg_ok)) if not ok]
    return Readiness(
        status="ok" if not down else "degraded",
        redis="ok" if redis_ok else "down",
        postgres="ok" if pg_ok else "down",
        down=down,
    )
