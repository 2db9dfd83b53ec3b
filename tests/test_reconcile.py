"""Reconcile: detect injected drift between the sorted sets and Postgres, and repair it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import keys, periods, rebuild, reconcile
from service.connections import pg_pool
from service.settings import Settings
from tests.support import pg_set, redis_set
from tests.test_rebuild import board_of, make_board, seed


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await pg_pool(settings)
    yield p
    await p.close()


async def inject_drift(redis: Redis, spec: dict[str, Any], window: str, period: str) -> None:
    key = keys.set_key(spec["id"], window, period)
    sign = -1 if spec["order"] == "desc" else 1
    raw: list[bytes] = await redis.zrange(key, 0, -1)  # type: ignore[assignment]
    members = {keys.player_of(spec["ties"], m.decode()): m for m in raw}
    await redis.zadd(key, {members["s10"]: sign * 123456789})  # wrong score
    await redis.zrem(key, members["s20"])  # missing
    await redis.zadd(key, {"ghost": 5})  # extra, not in Postgres at all
    await redis.zadd(key, {members["s31"]: sign * 77})  # banned in PG, still ranked in Redis


@pytest.mark.parametrize("ties", ["shared", "earliest"])
async def test_reconcile_finds_each_kind_of_drift_and_fix_repairs_it(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
    ties: str,
) -> None:
    spec = await make_board(client, "rc", ties=ties, windows=["all", "weekly"])
    week = periods.period_id("weekly", datetime.now(UTC))
    await seed(pg, "rc", "all", "all", 4_000)
    await seed(pg, "rc", "weekly", week, 50)
    board = await board_of(pool, "rc")
    await rebuild.rebuild_board(redis, pool, board, retention=2)

    clean = await reconcile.reconcile_board(redis, pool, board, retention=2)
    assert clean.clean and clean.drifted == 0
    assert [(s.window, s.postgres, s.redis) for s in clean.sets] == [
        ("all", 4_000, 4_000),
        ("weekly", 50, 50),
    ]

    await pg.execute("UPDATE players SET banned = true WHERE player_id = 's31'")
    await inject_drift(redis, spec, "all", "all")
    report = await reconcile.reconcile_board(redis, pool, board, retention=2)
    assert not report.clean and not report.fixed
    drift = {d.player_id: d for d in report.sets[0].players}
    assert {p: d.kind for p, d in drift.items()} == {
        "s10": "wrong_score",
        "s20": "missing",
        "ghost": "extra",
        "s31": "extra",
    }
    s10 = (await pg_set(pg, "rc", "all", "all"))["s10"]
    assert (drift["s10"].expected, drift["s10"].actual) == (s10, 123456789)
    assert 0 < report.sets[0].differing_buckets < report.sets[0].buckets
    assert [(d.player_id, d.kind) for d in report.sets[1].players] == [("s31", "extra")]

    fixed = await reconcile.reconcile_board(redis, pool, board, retention=2, fix=True)
    assert fixed.fixed and fixed.drifted == 5
    assert (fixed.sets[0].repaired, fixed.sets[1].repaired) == (4, 1)
    expected = await pg_set(pg, "rc", "all", "all")
    del expected["s31"]
    assert await redis_set(redis, spec, "all", "all") == expected
    assert await redis.hget(keys.versions_key("rc", "all", "all"), "s31") == b"2|"
    assert (await reconcile.reconcile_board(redis, pool, board, retention=2)).clean


async def test_a_missing_set_and_a_set_without_rows_are_drift(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    spec = await make_board(client, "gone", order="asc", windows=["all"])
    await seed(pg, "gone", "all", "all", 300)
    board = await board_of(pool, "gone")
    stale = keys.set_key("gone", "daily", "2020-01-01")
    await redis.zadd(stale, {"stray": 1})  # a window the board does not even have
    report = await reconcile.reconcile_board(redis, pool, board, retention=2, fix=True)
    assert report.fixed and report.drifted == 301
    assert [(s.period, s.redis, s.postgres) for s in report.sets] == [
        ("all", 0, 300),
        ("2020-01-01", 1, 0),
    ]
    assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "gone", "all", "all")
    assert not await redis.exists(stale)


async def run_cli(spawn: Any, *args: str) -> int:
    proc: subprocess.Popen[bytes] = spawn(*args)
    return await asyncio.to_thread(proc.wait, 60)


async def test_cli_exit_codes(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
    spawn: Any,
) -> None:
    spec = await make_board(client, "cli", windows=["all"])
    await seed(pg, "cli", "all", "all", 2_000)
    assert await run_cli(spawn, "rebuild", "cli") == 0
    assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "cli", "all", "all")
    assert await run_cli(spawn, "reconcile", "cli") == 0
    await pg.execute("UPDATE players SET banned = false WHERE player_id = 's31'")
    await inject_drift(redis, spec, "all", "all")
    assert await run_cli(spawn, "reconcile", "cli") == 1
    assert await run_cli(spawn, "reconcile", "cli", "--fix") == 0
    assert await run_cli(spawn, "reconcile", "cli", "--json") == 0
    assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "cli", "all", "all")
    assert await run_cli(spawn, "rebuild", "cli", "--window", "all", "--period", "current") == 0
    # names are there: a rebuild leaves them, unless told to rewrite them
    await pg.execute("UPDATE players SET display_name = 'Renamed' WHERE player_id = 's5'")
    assert await run_cli(spawn, "rebuild", "cli") == 0
    assert await redis.hget(keys.names_key("cli"), "s5") == b"Seed 5"
    assert await run_cli(spawn, "rebuild", "cli", "--names") == 0
    assert await redis.hget(keys.names_key("cli"), "s5") == b"Renamed"
    assert await run_cli(spawn, "rebuild", "nope") == 2
    assert await run_cli(spawn, "rebuild", "cli", "--window", "daily") == 2
