"""Cold start: Redis flushed under load -> the consumers rebuild the lost sets on their own,
exactly once, and the answers come back identical."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import boards, coldstart, keys, periods
from service.connections import pg_pool
from service.settings import Settings
from tests.support import ADMIN, drained, pg_set, redis_set
from tests.test_rebuild import make_board, seed

FAST = {"RANKSTREAM_COLDSTART_INTERVAL_MS": "200"}


async def submit(client: AsyncTestClient, items: list[dict[str, Any]]) -> None:  # type: ignore[type-arg]
    answer = await client.post("/v1/scores/batch", json={"submissions": items}, headers=ADMIN)
    assert answer.status_code == 202, answer.text


async def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def marker(redis: Redis, board: str) -> bytes:
    raw: Any = await redis.get(coldstart.marker_key(board))
    return bytes(raw or b"")


async def pages(client: AsyncTestClient, board: str) -> list[Any]:  # type: ignore[type-arg]
    out = []
    for window in ("all", "daily"):
        answer = await client.get(
            f"/v1/leaderboards/{board}/top", params={"window": window, "limit": 100}
        )
        assert answer.status_code == 200, answer.text
        out.append(answer.json())
        answer = await client.get(f"/v1/leaderboards/{board}/players/p7", params={"window": window})
        assert answer.status_code == 200, answer.text
        out.append(answer.json())
    return out


async def test_flushall_under_load_rebuilds_once_and_answers_come_back(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    specs = {
        "calm": await make_board(client, "calm", operator="best", windows=["all", "daily"]),
        "busy": await make_board(client, "busy", operator="increment", windows=["all", "daily"]),
    }
    spawn("consume", env_overrides=FAST)
    spawn("consume", env_overrides=FAST)
    today = periods.period_id("daily", datetime.now(UTC))
    for b in specs:
        for start in (0, 500):
            await submit(client, [
                {"board_id": b, "player_id": f"p{i // 4}", "score": (i * 7919) % 1000,
                 "display_name": f"Player {i // 4}"}
                for i in range(start, start + 500)
            ])  # fmt: skip
    await drained(redis, settings)
    # both consumers have made their first pass: the boards are marked warm
    await wait_for(lambda: redis.exists(*(coldstart.marker_key(b) for b in specs)), 10)
    await asyncio.sleep(0.5)
    before = await pages(client, "calm")

    stop = asyncio.Event()
    failures: list[str] = []
    sent = 0

    async def submitter() -> None:
        nonlocal sent
        n = 0
        while not stop.is_set():
            items = [
                {"board_id": "busy", "player_id": f"q{(n * 50 + i) // 3}", "score": 1,
                 "event_id": f"load-{n}-{i}"}
                for i in range(50)
            ]  # fmt: skip
            await submit(client, items)
            sent += len(items)
            n += 1
            await asyncio.sleep(0.01)

    async def reader() -> None:
        while not stop.is_set():
            for board in specs:
                answer = await client.get(f"/v1/leaderboards/{board}/top", params={"limit": 10})
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(submitter()), asyncio.create_task(reader())]
    await asyncio.sleep(0.5)
    await redis.flushall()
    await asyncio.sleep(2.0)  # submissions keep coming while the sets come back
    stop.set()
    await asyncio.gather(*tasks)
    await drained(redis, settings)
    assert failures == []
    assert sent >= 500

    async def converged() -> bool:
        for board, spec in specs.items():
            for window, period in (("all", "all"), ("daily", today)):
                if await redis_set(redis, spec, window, period) != await pg_set(
                    pg, board, window, period
                ):
                    return False
        return True

    await wait_for(converged, 20)
    # one recovery per board, by one of the two consumers
    await asyncio.sleep(1.0)  # several more passes of both consumers
    assert int(await redis.get(coldstart.REBUILDS_KEY) or 0) == 2
    markers = [await marker(redis, b) for b in specs]
    assert all(m.startswith(b"done:") for m in markers), markers
    assert await converged()
    # Redis answers again, the same as before the flush
    answer = await client.get("/v1/leaderboards/calm/top", params={"limit": 5})
    assert answer.headers["x-rankstream-source"] == "redis"
    assert await pages(client, "calm") == before
    # every accepted submission that survived the flush is counted once
    total = await pg.fetchval(
        "SELECT sum(score) FROM player_scores WHERE board_id = 'busy' AND window_name = 'all'"
        " AND player_id LIKE 'q%'"
    )
    assert total == await pg.fetchval(
        "SELECT count(*) FROM score_events WHERE board_id = 'busy' AND player_id LIKE 'q%'"
    )


async def test_lost_set_rebuilt_only_when_postgres_has_rows(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
) -> None:
    spec = await make_board(client, "one", operator="best", windows=["all", "daily", "weekly"])
    now = datetime.now(UTC)
    today = periods.period_id("daily", now)
    yesterday = periods.previous("daily", today)
    await seed(pg, "one", "all", "all", 500)
    await seed(pg, "one", "daily", yesterday, 50)  # a retained past period
    await redis.delete(coldstart.marker_key("one"))  # the rows are there; Redis lost them
    pool = await pg_pool(settings)
    try:
        board = (await boards.load_all(pool))["one"]
        # cold: the marker is missing -> every set with rows is rebuilt, empty ones are not
        first = await coldstart.recover_board(redis, pool, board, 2)
        assert first is not None and first.cold
        assert sorted((s.window, s.period) for s in first.sets) == [
            ("all", "all"),
            ("daily", yesterday),
        ]
        assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "one", "all", "all")
        assert not await redis.exists(keys.set_key("one", "daily", today))
        # warm, nothing lost: nothing to do (the empty current periods stay without keys)
        assert await coldstart.recover_board(redis, pool, board, 2) is None
        # one set's keys deleted: only that set is rebuilt
        await redis.delete(
            keys.set_key("one", "all", "all"), keys.versions_key("one", "all", "all")
        )
        again = await coldstart.recover_board(redis, pool, board, 2)
        assert again is not None and not again.cold
        assert [(s.window, s.period) for s in again.sets] == [("all", "all")]
        assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "one", "all", "all")
        # another holder of the lock: nothing is done
        await redis.delete(coldstart.marker_key("one"))
        await redis.set(coldstart.lock_key("one"), "someone-else", px=5_000)
        assert await coldstart.recover_board(redis, pool, board, 2) is None
        await redis.delete(coldstart.lock_key("one"))
        # a recovery that died half-way (marker still pending) is done again
        await redis.set(coldstart.marker_key("one"), "pending:dead")
        redo = await coldstart.recover_board(redis, pool, board, 2)
        assert redo is not None and redo.cold and len(redo.sets) == 2
        assert (await marker(redis, "one")).startswith(b"done:")
        assert int(await redis.get(coldstart.REBUILDS_KEY) or 0) == 3
    finally:
        await pool.close()


async def test_lock_is_exclusive_and_released_only_by_its_owner(redis: Redis) -> None:
    async with coldstart.locked(redis, "t:lock", ttl_ms=300) as mine:
        assert mine
        async with coldstart.locked(redis, "t:lock") as theirs:
            assert not theirs
        await asyncio.sleep(0.5)  # refreshed beyond its TTL while held
        assert await redis.exists("t:lock")
        await redis.set("t:lock", "taken-over")
    assert await redis.get("t:lock") == b"taken-over"  # not deleted: no longer ours


async def test_a_cancellation_while_leaving_the_lock_ends_the_holder(redis: Redis) -> None:
    # The consumer's cold-start loop was cancelled (SIGTERM) just as it left the lock: the
    # lock swallowed the cancellation and the consumer never exited.
    left = asyncio.Event()

    async def holder() -> None:
        async with coldstart.locked(redis, "t:lock") as mine:
            assert mine
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # delivered at the lock's first wait on the way out
        left.set()  # reached only when the cancellation was lost

    task = asyncio.create_task(holder())
    await asyncio.wait({task})
    assert task.cancelled()
    assert not left.is_set()
    assert not await redis.exists("t:lock")  # released all the same


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") == "player_scores" else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_the_probe_for_lost_sets_reads_only_the_set_even_with_a_generic_plan(
    pg: asyncpg.Connection,
) -> None:
    # Two boards of two windows of 500,000 players, as the 1M-player benchmark has, their
    # rows interleaved as they arrive, and statistics to plan by: the EXISTS form then
    # planned on the primary key (it did not with each board's rows in one block). A pass
    # asks about periods with no rows (a new board's retained past periods) every time;
    # the probe must descend to the set, not read a whole index and filter it.
    done = 0
    for upto in (20_000, 100_000, 250_000, 500_000):  # boards' rows interleaved on disk
        for board in ("b0", "b1"):
            await pg.execute(
                "INSERT INTO player_scores (board_id, window_name, period, player_id, score,"
                " reached_at) SELECT $1, w, p, 'p' || i, i, now()"
                " FROM generate_series($2::int, $3::int) AS i,"
                " (VALUES ('all', 'all'), ('daily', '2026-11-23')) AS s(w, p)",
                board,
                done + 1,
                upto,
            )
        done = upto
    await pg.execute("ANALYZE player_scores")
    await pg.execute("SET plan_cache_mode = force_generic_plan")
    await pg.execute(f"PREPARE probe(text, text[], text[]) AS {coldstart.WITH_ROWS}")
    raw = await pg.fetchval(
        "EXPLAIN (FORMAT JSON) EXECUTE probe('b0', '{daily,daily,all}',"
        " '{2026-11-22,2026-11-21,all}')"
    )
    scans = _scans(json.loads(raw)[0]["Plan"])
    assert scans, "the plan reads player_scores"
    for scan in scans:
        # led by (board, window, period): the primary key (player first) also takes the
        # condition, but only by reading all of its entries, which the EXISTS form chose
        assert scan.get("Index Name") == "player_scores_ranking", scan
    found = await pg.fetch(
        coldstart.WITH_ROWS, "b0", ["daily", "daily", "all"], ["2026-11-22", "2026-11-23", "all"]
    )
    assert sorted((r["window_name"], r["period"]) for r in found) == [
        ("all", "all"),
        ("daily", "2026-11-23"),
    ]
