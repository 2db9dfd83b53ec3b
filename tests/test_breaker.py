"""Circuit breakers: a dependency that keeps failing is skipped, then probed again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import embedded
from service.app import create_app
from service.breaker import Breaker
from service.settings import Settings
from tests.conftest import Servers
from tests.support import ADMIN, ADMIN_KEY
from tests.test_rankings import Seed, make_board, seed


def test_breaker_opens_cools_down_and_probes_once() -> None:
    breaker = Breaker("redis", threshold=3, cooldown_s=0.2)
    for _ in range(2):
        breaker.failure()
    assert breaker.allow() and not breaker.skipping
    breaker.failure()
    assert breaker.skipping and not breaker.allow()
    time.sleep(0.25)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else keeps failing fast meanwhile
    breaker.success()
    assert breaker.allow() and not breaker.skipping


async def test_redis_down_fails_fast_and_reads_go_to_postgres(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    servers: Servers,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
    submit = f"/v1/leaderboards/{board.id}/scores"
    # The running server: an earlier test may have restarted it (a new pid).
    embedded.stop(embedded.ensure_redis(servers.data_dir, servers.redis.port))
    try:
        details = []
        for _ in range(7):
            answer = await client.post(submit, json={"player_id": "c", "score": 1}, headers=ADMIN)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            details.append(answer.json()["detail"])
        # The first failures reached Redis; then the breaker answered without trying.
        assert "unreachable" in details[0]
        assert details[-1] == "redis is unavailable; retry shortly"
        top = await client.get(f"/v1/leaderboards/{board.id}/top")
        assert top.status_code == 200
        assert top.headers["x-rankstream-source"] == "postgres"
        assert [e["player_id"] for e in top.json()["entries"]] == ["b", "a"]
    finally:
        embedded.ensure_redis(servers.data_dir, servers.redis.port)
    await asyncio.sleep(2.1)  # the cool-down: the next call probes Redis again
    for _ in range(20):
        answer = await client.post(submit, json={"player_id": "c", "score": 1}, headers=ADMIN)
        if answer.status_code == 202:
            break
        await asyncio.sleep(0.2)
    assert answer.status_code == 202
    top = await client.get(f"/v1/leaderboards/{board.id}/top")
    assert top.headers["x-rankstream-source"] == "redis"


async def test_a_full_redis_pool_is_503_but_not_a_redis_failure(
    settings: Settings, pg: asyncpg.Connection, redis: Redis
) -> None:
    from service import apikeys

    await apikeys.store(pg, ADMIN_KEY, "admin", "tests")
    small = msgspec.structs.replace(settings, redis_pool_size=1, redis_pool_timeout_s=0.1)
    async with AsyncTestClient(app=create_app(small)) as client:
        board = await make_board(client)
        services = client.app.state.services
        pool = services.redis.connection_pool

        async def hold() -> Any:
            return await pool.get_connection()

        async def let_go(connection: Any) -> None:
            await pool.release(connection)

        held = client.blocking_portal.call(hold)  # the app's loop: its pool lives there
        try:
            answers = [
                await client.post(
                    f"/v1/leaderboards/{board.id}/scores",
                    json={"player_id": "p", "score": 1},
                    headers=ADMIN,
                )
                for _ in range(6)
            ]
        finally:
            client.blocking_portal.call(let_go, held)
        assert [a.status_code for a in answers] == [503] * 6
        assert all(a.headers["retry-after"] for a in answers)
        assert services.breakers.redis.failures == 0  # busy, not down: not skipped
        after = await client.post(
            f"/v1/leaderboards/{board.id}/scores",
            json={"player_id": "p", "score": 1},
            headers=ADMIN,
        )
        assert after.status_code == 202
