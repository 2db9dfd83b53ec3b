"""Admin routes end to end with a real consumer: ban/unban, entry removal, erasure, board
deletion (nothing left behind in either store), and background rebuild jobs."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import coldstart, keys, periods
from service.settings import Settings
from tests.support import ADMIN, drained, pg_set, redis_set
from tests.test_rebuild import make_board, seed

PLAYERS = [f"p{i}" for i in range(1, 7)]


async def submit(client: AsyncTestClient, items: list[dict[str, Any]]) -> None:  # type: ignore[type-arg]
    answer = await client.post("/v1/scores/batch", json={"submissions": items}, headers=ADMIN)
    assert answer.status_code == 202, answer.text


async def world(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    spawn: Any,
) -> list[dict[str, Any]]:
    """Two boards (shared/desc and earliest/asc) with six players, applied by a consumer."""
    spawn("consume")
    specs = [
        await make_board(client, "b1", operator="best", windows=["all", "daily"]),
        await make_board(client, "b2", operator="latest", order="asc", ties="earliest",
                         windows=["all", "weekly"]),
    ]  # fmt: skip
    await submit(client, [
        {"board_id": b["id"], "player_id": p, "score": 10 * i + n, "display_name": f"Name {p}"}
        for n, b in enumerate(specs) for i, p in enumerate(PLAYERS)
    ])  # fmt: skip
    await drained(redis, settings)
    # The consumer's cold-start recovery of the new boards runs beside the tests' own steps;
    # wait for it, so each test sees its operation alone (a delete during a rebuild is
    # tests/test_rebuild.py's subject).
    deadline = time.monotonic() + 30
    for spec in specs:
        while not ((await redis.get(coldstart.marker_key(spec["id"]))) or b"").startswith(b"done:"):
            assert time.monotonic() < deadline, f"no cold-start recovery of {spec['id']}"
            await asyncio.sleep(0.05)
    return specs


def sets_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    return [(w, periods.period_id(w, now)) for w in spec["windows"]]


async def assert_sets_equal_pg(redis: Redis, pg: asyncpg.Connection, spec: dict[str, Any],
                               hidden: frozenset[str] = frozenset()) -> None:  # fmt: skip
    for window, period in sets_of(spec):
        expected = await pg_set(pg, spec["id"], window, period)
        for player in hidden:
            expected.pop(player, None)
        assert await redis_set(redis, spec, window, period) == expected


async def traces_in_redis(redis: Redis, player: str) -> list[str]:
    """Every key that still mentions the player (members, hash fields, names)."""
    found = []
    client: Any = redis  # replies are bytes: no decode_responses
    async for raw in client.scan_iter(match="lb:*"):
        key = raw.decode()
        kind = (await client.type(key)).decode()
        if kind == "zset":
            items = [m.decode() for m in await client.zrange(key, 0, -1)]
        elif kind == "hash":
            items = [f.decode() for f in await client.hkeys(key)]
        else:
            continue
        if any(item == player or item.endswith("|" + player) for item in items):
            found.append(key)
    return found


async def test_ban_hides_everywhere_ignores_later_submissions_and_unban_restores(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    specs = await world(client, redis, settings, spawn)
    before = {s["id"]: await pg_set(pg, s["id"], "all", "all") for s in specs}
    assert (await client.post("/v1/admin/players/p2/ban")).status_code == 401
    answer = await client.post("/v1/admin/players/p2/ban", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"player_id": "p2", "banned": True, "entries": 4}
    for spec in specs:
        await assert_sets_equal_pg(redis, pg, spec, hidden=frozenset({"p2"}))
        for window, _ in sets_of(spec):
            top = await client.get(f"/v1/leaderboards/{spec['id']}/top",
                                   params={"window": window})  # fmt: skip
            assert "p2" not in [e["player_id"] for e in top.json()["entries"]]
            assert top.json()["total"] == 5
        rank = await client.get(f"/v1/leaderboards/{spec['id']}/players/p2")
        assert rank.status_code == 404
    # later submissions of a banned player are ignored
    await submit(client, [{"board_id": "b1", "player_id": "p2", "score": 10**6}])
    await drained(redis, settings)
    assert (await pg_set(pg, "b1", "all", "all"))["p2"] == before["b1"]["p2"]
    assert "p2" not in await redis_set(redis, specs[0], "all", "all")

    answer = await client.delete("/v1/admin/players/p2/ban", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["banned"] is False
    for spec in specs:
        await assert_sets_equal_pg(redis, pg, spec)
        assert (await redis_set(redis, spec, "all", "all"))["p2"] == before[spec["id"]]["p2"]
    # a player never seen can be banned ahead of time
    answer = await client.post("/v1/admin/players/nobody/ban", headers=ADMIN)
    assert answer.json() == {"player_id": "nobody", "banned": True, "entries": 0}


async def test_remove_entry_leaves_other_boards_and_allows_a_fresh_start(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    specs = await world(client, redis, settings, spawn)
    answer = await client.delete("/v1/leaderboards/b2/players/p3", headers=ADMIN)
    assert answer.status_code == 204, answer.text
    assert await pg.fetchval("SELECT count(*) FROM player_scores WHERE board_id = 'b2'"
                             " AND player_id = 'p3'") == 0  # fmt: skip
    assert await pg.fetchval("SELECT count(*) FROM player_scores WHERE board_id = 'b1'"
                             " AND player_id = 'p3'") == 2  # fmt: skip
    await assert_sets_equal_pg(redis, pg, specs[1])
    assert [k for k in await traces_in_redis(redis, "p3") if "{b2}" in k] == []
    assert "p3" in await redis_set(redis, specs[0], "all", "all")
    again = await client.delete("/v1/leaderboards/b2/players/p3", headers=ADMIN)
    assert again.status_code == 404
    assert (await client.delete("/v1/leaderboards/zz/players/p3", headers=ADMIN)).status_code == 404
    # the player comes back with a new submission (version 1 again)
    await submit(client, [{"board_id": "b2", "player_id": "p3", "score": 4}])
    await drained(redis, settings)
    assert (await redis_set(redis, specs[1], "all", "all"))["p3"] == 4
    await assert_sets_equal_pg(redis, pg, specs[1])


async def test_erase_player_leaves_nothing_in_either_store(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    specs = await world(client, redis, settings, spawn)
    assert await traces_in_redis(redis, "p4")  # names, versions and members of both boards
    answer = await client.delete("/v1/players/p4", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["rows"], body["events"]) == (4, 2) and body["redis_entries"] >= 8
    for table in ("players", "player_scores", "score_events"):
        assert await pg.fetchval(f"SELECT count(*) FROM {table} WHERE player_id = 'p4'") == 0
    assert await traces_in_redis(redis, "p4") == []
    for spec in specs:
        await assert_sets_equal_pg(redis, pg, spec)
    assert (await client.delete("/v1/players/p4", headers=ADMIN)).status_code == 404
    await asyncio.sleep(2.2)  # the second pass finds nothing to do and breaks nothing
    assert await traces_in_redis(redis, "p4") == []
    assert len(await redis_set(redis, specs[0], "all", "all")) == 5


async def test_delete_board_leaves_nothing_behind(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    specs = await world(client, redis, settings, spawn)
    assert [k async for k in redis.scan_iter(match=keys.board_pattern("b2"))]
    answer = await client.delete("/v1/leaderboards/b2", headers=ADMIN)
    assert answer.status_code == 204, answer.text
    assert [k async for k in redis.scan_iter(match=keys.board_pattern("b2"))] == []
    assert await pg.fetchval("SELECT count(*) FROM leaderboards WHERE id = 'b2'") == 0
    for table in ("player_scores", "score_events", "event_ids"):
        assert await pg.fetchval(f"SELECT count(*) FROM {table} WHERE board_id = 'b2'") == 0
    assert await pg.fetchval("SELECT count(*) FROM score_events WHERE board_id = 'b1'") == 6
    assert (await client.get("/v1/leaderboards/b2")).status_code == 404
    assert (await client.get("/v1/leaderboards/b2/top")).status_code == 404
    assert (await client.delete("/v1/leaderboards/b2", headers=ADMIN)).status_code == 404
    await assert_sets_equal_pg(redis, pg, specs[0])
    # the id can be used again, from scratch
    await make_board(client, "b2", windows=["all"])
    await submit(client, [{"board_id": "b2", "player_id": "p1", "score": 1}])
    await drained(redis, settings)
    assert await pg_set(pg, "b2", "all", "all") == {"p1": 1}


async def test_rebuild_job_runs_in_the_background_and_reports_progress(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
) -> None:
    spec = await make_board(client, "jobs", windows=["all", "monthly"])
    month = periods.period_id("monthly", datetime.now(UTC))
    await seed(pg, "jobs", "all", "all", 20_000)
    await seed(pg, "jobs", "monthly", month, 500)
    url = "/v1/admin/leaderboards/jobs/rebuild"
    assert (await client.post(url)).status_code == 401
    assert (
        await client.post("/v1/admin/leaderboards/nope/rebuild", headers=ADMIN)
    ).status_code == 404
    bad = await client.post(url, params={"window": "daily"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["field"] == "window"
    answer = await client.post(url, headers=ADMIN)
    assert answer.status_code == 202, answer.text
    job_url = answer.json()["status_url"]
    states = []
    for _ in range(200):
        job = (await client.get(job_url, headers=ADMIN)).json()
        states.append(job["state"])
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done", job
    assert job["done"] == job["total"] == 20_500
    assert [(s["window"], s["rows"]) for s in job["result"]["sets"]] == [
        ("all", 20_000),
        ("monthly", 500),
    ]
    assert job["finished_at"] is not None and job["error"] is None
    assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "jobs", "all", "all")
    assert await redis_set(redis, spec, "monthly", month) == await pg_set(
        pg, "jobs", "monthly", month
    )
    one = await client.post(url, params={"window": "monthly", "period": "current"}, headers=ADMIN)
    assert one.status_code == 202
    missing = await client.get("/v1/admin/jobs/doesnotexist", headers=ADMIN)
    assert missing.status_code == 404
    assert (await client.get(job_url)).status_code == 401
