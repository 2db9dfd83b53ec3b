"""The in-process page cache: hits cost no Redis read; a board change or the lifetime ends them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import embedded, keys, pgranking
from service.app import create_app
from service.settings import Settings
from tests.conftest import Servers
from tests.test_rankings import Seed, make_board, seed


@pytest.fixture
async def cached(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    # Rate limits off: their Lua calls would blur the count of reads that reach Redis.
    tuned = msgspec.structs.replace(settings, page_cache_ttl_s=2.0, rate_limits_enabled=False)
    app = create_app(tuned)
    async with AsyncTestClient(app=app) as client:
        pages = app.state.services.pages
        for _ in range(100):  # the subscription starts in the background
            if pages.enabled:
                break
            await asyncio.sleep(0.02)
        assert pages.enabled
        yield client


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _top(client: AsyncTestClient, board: str) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    answer = await client.get(f"/v1/leaderboards/{board}/top?limit=5")
    assert answer.status_code == 200
    return [(e["player_id"], e["score"]) for e in answer.json()["entries"]]


async def test_hits_skip_redis_and_a_board_change_drops_them(
    cached: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
) -> None:
    board = await make_board(cached)
    await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
    assert await _top(cached, board.id) == [("b", 20), ("a", 10)]
    before = await _evalsha_calls(redis)
    for _ in range(5):
        assert await _top(cached, board.id) == [("b", 20), ("a", 10)]
    assert await _evalsha_calls(redis) == before  # served from memory
    etag = (await cached.get(f"/v1/leaderboards/{board.id}/top?limit=5")).headers["etag"]
    again = await cached.get(
        f"/v1/leaderboards/{board.id}/top?limit=5", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304

    await seed(pg, redis, board, [Seed("a", 30, version=2)])  # INCRs the revision counter
    for _ in range(100):
        if await _top(cached, board.id) == [("a", 30), ("b", 20)]:
            break
        await asyncio.sleep(0.01)
    assert await _top(cached, board.id) == [("a", 30), ("b", 20)]
    fresh = await cached.get(
        f"/v1/leaderboards/{board.id}/top?limit=5", headers={"If-None-Match": etag}
    )
    assert fresh.status_code == 200


async def test_a_change_without_notification_is_seen_after_the_lifetime(
    cached: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
) -> None:
    board = await make_board(cached)
    await seed(pg, redis, board, [Seed("a", 10)])
    assert await _top(cached, board.id) == [("a", 10)]
    # Written behind the cache's back: no revision change, so no notification.
    await redis.zadd(keys.set_key(board.id, "all", "all"), {"z": -99})
    assert await _top(cached, board.id) == [("a", 10)]
    await asyncio.sleep(2.1)
    assert await _top(cached, board.id) == [("z", 99), ("a", 10)]


async def test_other_boards_keep_their_pages(
    cached: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
) -> None:
    one, two = await make_board(cached), await make_board(cached)
    await seed(pg, redis, one, [Seed("a", 1)])
    await seed(pg, redis, two, [Seed("b", 2)])
    await _top(cached, one.id)
    await _top(cached, two.id)
    before = await _evalsha_calls(redis)
    await seed(pg, redis, one, [Seed("a", 5, version=2)])
    await asyncio.sleep(0.2)
    assert await _top(cached, two.id) == [("b", 2)]
    assert await _evalsha_calls(redis) == before + 1  # only the seed's apply script
    assert await _top(cached, one.id) == [("a", 5)]


async def test_postgres_answers_are_kept_for_the_lifetime_while_redis_is_down(
    settings: Settings,
    redis: Redis,
    pg: asyncpg.Connection,
    servers: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A lifetime well above the time five reads take on a busy machine, where the first
    # of them wait for Redis to refuse before the breaker opens.
    lifetime = 5.0
    tuned = msgspec.structs.replace(settings, page_cache_ttl_s=lifetime, rate_limits_enabled=False)
    calls: list[str] = []
    real_top = pgranking.top

    async def counted_top(*args: Any, **kwargs: Any) -> Any:
        calls.append("top")
        return await real_top(*args, **kwargs)

    monkeypatch.setattr(pgranking, "top", counted_top)
    async with AsyncTestClient(app=create_app(tuned)) as client:
        board = await make_board(client)
        await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
        # The running server: an earlier test may have restarted it (a new pid).
        embedded.stop(embedded.ensure_redis(servers.data_dir, servers.redis.port))
        try:
            url = f"/v1/leaderboards/{board.id}/top?limit=5"
            answers = [await client.get(url) for _ in range(5)]
            assert [a.headers["x-rankstream-source"] for a in answers] == ["postgres"] * 5
            assert {a.content for a in answers} == {answers[0].content}
            assert [(e["player_id"], e["score"]) for e in answers[0].json()["entries"]] == [
                ("b", 20),
                ("a", 10),
            ]
            assert calls == ["top"]  # one Postgres read for five answers
            # Nobody says when a Postgres answer goes stale: the lifetime alone ends it.
            await pg.execute(
                "UPDATE player_scores SET score = 30, version = version + 1 "
                "WHERE board_id = $1 AND player_id = 'a'",
                board.id,
            )
            await asyncio.sleep(lifetime + 0.1)
            after = await client.get(url)
            assert calls == ["top", "top"]
            assert [(e["player_id"], e["score"]) for e in after.json()["entries"]] == [
                ("a", 30),
                ("b", 20),
            ]
        finally:
            embedded.ensure_redis(servers.data_dir, servers.redis.port)
