"""Dependencies failing under load: the consumer holds its batch, retries, and loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import embedded
from service.settings import Settings
from tests.conftest import Servers
from tests.support import drained
from tests.test_ingest import make_board, submit_all


async def test_postgres_stopped_mid_ingest_loses_nothing(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    servers: Servers,
    spawn: Any,
) -> None:
    await make_board(client, "pgdown", operator="increment")
    items = [{"board_id": "pgdown", "player_id": f"p{i % 40}", "score": 1} for i in range(8000)]
    await submit_all(client, items)
    spawn("consume")
    while await redis.xlen(settings.stream_key) == 8000 and not await _acked_any(redis, settings):
        await asyncio.sleep(0.01)
    embedded.stop(servers.postgres)
    await asyncio.sleep(2)  # the consumer keeps retrying its batch meanwhile
    restarted = embedded.ensure_postgres(servers.data_dir, servers.postgres.port, fsync=False)
    assert restarted.port == servers.postgres.port
    await drained(redis, settings, timeout=60)
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM score_events") == 8000
        assert await conn.fetchval("SELECT sum(score) FROM player_scores") == 8000
        rows = await conn.fetch("SELECT player_id, score FROM player_scores")
    finally:
        await conn.close()
    ranked = await redis.zrange("lb:{pgdown}:all:all", 0, -1, withscores=True)
    assert {m.decode(): -int(s) for m, s in ranked} == {r["player_id"]: r["score"] for r in rows}


async def test_redis_restart_mid_ingest_converges(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    servers: Servers,
    spawn: Any,
) -> None:
    await make_board(client, "rdown", operator="increment")
    items = [{"board_id": "rdown", "player_id": f"p{i % 40}", "score": 2} for i in range(8000)]
    await submit_all(client, items)
    spawn("consume")
    while not await _acked_any(redis, settings):
        await asyncio.sleep(0.01)
    embedded.stop(servers.redis)  # SIGTERM: Redis writes its AOF before exiting
    await asyncio.sleep(1)
    embedded.ensure_redis(servers.data_dir, servers.redis.port)
    await drained(redis, settings, timeout=60)
    assert await pg.fetchval("SELECT count(*) FROM score_events") == 8000
    assert await pg.fetchval("SELECT sum(score) FROM player_scores") == 16000
    rows = await pg.fetch("SELECT player_id, score FROM player_scores")
    ranked = await redis.zrange("lb:{rdown}:all:all", 0, -1, withscores=True)
    assert {m.decode(): -int(s) for m, s in ranked} == {r["player_id"]: r["score"] for r in rows}


async def _acked_any(redis: Redis, settings: Settings) -> bool:
    try:
        groups = await redis.xinfo_groups(settings.stream_key)
    except Exception:
        return False
    return any(g["entries-read"] for g in groups)
