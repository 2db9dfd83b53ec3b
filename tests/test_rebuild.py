"""Zero-downtime rebuild: PG -> temporary key -> atomic swap -> re-apply of later changes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import boards, coldstart, keys, moderation, periods, rankcache, rebuild
from service.connections import pg_pool
from service.models import Board
from service.settings import Settings
from tests.support import ADMIN, drained, pg_set, redis_order, redis_set


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await pg_pool(settings)
    yield p
    await p.close()


async def make_board(client: AsyncTestClient, board_id: str, **config: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    answer = await client.post("/v1/leaderboards", json={"id": board_id, **config}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def board_of(pool: asyncpg.Pool, board_id: str) -> Board:
    return (await boards.load_all(pool))[board_id]


async def seed(pg: asyncpg.Connection, board: str, window: str, period: str, n: int) -> None:
    """n rows straight into Postgres (as if Redis had never seen them)."""
    await pg.execute(
        """
        INSERT INTO player_scores (board_id, window_name, period, player_id, score, version,
                                   reached_at)
        SELECT $1, $2, $3, 's' || i, (i * 7919) % 100003, 1 + i % 3,
               timestamptz '2026-01-01' + i * interval '1 second'
        FROM generate_series(1, $4) AS i
        """,
        board,
        window,
        period,
        n,
    )
    await pg.execute(
        "INSERT INTO players (player_id, display_name) SELECT 's' || i, 'Seed ' || i"
        " FROM generate_series(1, $1) AS i ON CONFLICT DO NOTHING",
        n,
    )


async def temp_keys(redis: Redis, board: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=keys.board_pattern(board)) if b":rebuild:" in k]


@pytest.mark.parametrize("ties", ["shared", "earliest"])
async def test_rebuild_from_empty_redis_equals_postgres(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: Settings,
    ties: str,
) -> None:
    spec = await make_board(client, "r1", order="asc", ties=ties, windows=["all", "daily"])
    today = periods.period_id("daily", datetime.now(UTC))
    await seed(pg, "r1", "all", "all", 5_000)
    await seed(pg, "r1", "daily", today, 300)
    await pg.execute("UPDATE players SET banned = true WHERE player_id IN ('s7', 's8')")
    board = await board_of(pool, "r1")
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    report = await rebuild.rebuild_board(
        redis, pool, board, retention=2, progress=progress, chunk_rows=1_000
    )
    assert [(s.window, s.period, s.rows) for s in report.sets] == [
        ("all", "all", 5_000),
        ("daily", today, 300),
    ]
    assert report.rows == 5_300
    assert seen[-1] == (5_300, 5_300) and len(seen) >= 6
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    for window, period in (("all", "all"), ("daily", today)):
        expected = await pg_set(pg, "r1", window, period)
        del expected["s7"], expected["s8"]  # banned: hidden
        assert await redis_set(redis, spec, window, period) == expected
        # same order as the Postgres read path
        answer = await client.get(
            "/v1/leaderboards/r1/top", params={"window": window, "limit": 100}
        )
        assert answer.headers["x-rankstream-source"] == "redis"
        listed = [e["player_id"] for e in answer.json()["entries"]]
        assert listed == (await redis_order(redis, spec, window, period))[:100]
    versions = keys.versions_key("r1", "all", "all")
    tombstone: Any = await redis.hget(versions, "s7")
    assert tombstone.endswith(b"|")
    assert await redis.hget(keys.names_key("r1"), "s5") == b"Seed 5"
    assert await redis.ttl(keys.set_key("r1", "all", "all")) == -1
    assert await redis.ttl(keys.set_key("r1", "daily", today)) > 0
    assert await temp_keys(redis, "r1") == []
    # PG fallback answers the same page as the rebuilt set
    await redis.delete(keys.set_key("r1", "all", "all"), keys.revision_key("r1"))
    from_pg = await client.get("/v1/leaderboards/r1/top", params={"window": "all", "limit": 100})
    assert from_pg.headers["x-rankstream-source"] == "postgres"
    await rebuild.rebuild_board(redis, pool, board, retention=2, window="all")
    from_redis = await client.get("/v1/leaderboards/r1/top", params={"window": "all", "limit": 100})
    assert from_redis.json()["entries"] == from_pg.json()["entries"]


async def test_changes_committed_during_the_rebuild_survive_the_swap(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """Between snapshot and swap, rows change in Postgres and reach the old set (as the
    consumer does it); the swap replaces the old set, the re-apply brings them back."""
    spec = await make_board(client, "r2", windows=["all"])
    await seed(pg, "r2", "all", "all", 3_000)
    board = await board_of(pool, "r2")
    script = rankcache.apply_script(redis)
    calls = 0

    async def meanwhile(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls != 2:
            return
        changed = await pg.fetch(
            """
            INSERT INTO player_scores AS p (board_id, window_name, period, player_id, score,
                                            reached_at)
            VALUES ('r2', 'all', 'all', 's1', 999999, now()), ('r2', 'all', 'all', 'new', 5,
                    now())
            ON CONFLICT (board_id, window_name, period, player_id) DO UPDATE
            SET score = EXCLUDED.score, version = p.version + 1, updated_at = now()
            RETURNING player_id, score, version, reached_at
            """
        )
        rows = [
            rankcache.ScoreRow("r2", "all", "all", r["player_id"], r["score"], r["version"],
                               r["reached_at"])
            for r in changed
        ]  # fmt: skip
        await rankcache.apply_rows(redis, script, {"r2": board}, rows, 2)

    report = await rebuild.rebuild_board(
        redis, pool, board, retention=2, progress=meanwhile, chunk_rows=500
    )
    assert report.sets[0].reapplied == 2
    got = await redis_set(redis, spec, "all", "all")
    assert got == await pg_set(pg, "r2", "all", "all")
    assert got["s1"] == 999999 and got["new"] == 5
    assert await redis.hget(keys.versions_key("r2", "all", "all"), "s1") == b"3"


async def test_rebuild_under_live_submissions_loses_nothing_and_reads_never_fail(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: Settings,
    spawn: Any,
) -> None:
    spawn("consume")
    spec = await make_board(client, "live", operator="increment", windows=["all", "daily"])
    today = periods.period_id("daily", datetime.now(UTC))
    await seed(pg, "live", "all", "all", 40_000)
    await seed(pg, "live", "daily", today, 2_000)
    board = await board_of(pool, "live")
    await rebuild.rebuild_board(redis, pool, board, retention=2)  # warm: sets exist
    stop = asyncio.Event()
    reads = 0
    failures: list[str] = []
    sent = 0

    async def submitter() -> None:
        nonlocal sent
        n = 0
        while not stop.is_set():
            items = [
                {"board_id": "live", "player_id": f"s{(n * 37 + i * 101) % 2_500 + 1}",
                 "score": (n + i) % 9 + 1, "event_id": f"live-{n}-{i}"}
                for i in range(100)
            ]  # fmt: skip
            answer = await client.post("/v1/scores/batch", json={"submissions": items},
                                       headers=ADMIN)  # fmt: skip
            assert answer.status_code == 202, answer.text
            sent += len(items)
            n += 1
            await asyncio.sleep(0.01)

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for window in ("all", "daily"):
                answer = await client.get(
                    "/v1/leaderboards/live/top", params={"window": window, "limit": 50}
                )
                reads += 1
                if answer.status_code != 200 or len(answer.json()["entries"]) != 50:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(0.005)

    async def slow(done: int, total: int) -> None:
        await asyncio.sleep(0.05)  # let submissions commit between snapshot and swap

    tasks = [asyncio.create_task(submitter()), asyncio.create_task(reader())]
    await asyncio.sleep(0.3)
    report = await rebuild.rebuild_board(
        redis, pool, board, retention=2, progress=slow, chunk_rows=2_000
    )
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks)
    await drained(redis, settings)
    assert failures == []
    assert reads > 20 and sent >= 1_000
    assert sum(s.reapplied for s in report.sets) > 0  # updates did land during the rebuild
    assert await pg.fetchval("SELECT count(*) FROM score_events") == sent
    for window, period in (("all", "all"), ("daily", today)):
        assert await redis_set(redis, spec, window, period) == await pg_set(
            pg, "live", window, period
        )
    assert await temp_keys(redis, "live") == []


async def test_removals_and_board_deletion_during_a_rebuild_stick(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """The snapshot still holds players removed (or a board deleted) before the swap; the
    rebuild must not bring them back."""
    spec = await make_board(client, "r3", ties="earliest", windows=["all"])
    await seed(pg, "r3", "all", "all", 2_000)
    board = await board_of(pool, "r3")
    await rebuild.rebuild_board(redis, pool, board, retention=2)
    calls = 0

    async def remove_some(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await moderation.remove_entry(redis, pool, board, "s5")
            await moderation.erase_player(redis, pool, {"r3": board}, "s6")

    # names=True: the names hash exists, and a rebuild writing names (as a cold start does)
    # must not bring back the names of players removed meanwhile either
    await rebuild.rebuild_board(
        redis, pool, board, retention=2, progress=remove_some, chunk_rows=500, names=True
    )
    got = await redis_set(redis, spec, "all", "all")
    assert "s5" not in got and "s6" not in got
    assert got == await pg_set(pg, "r3", "all", "all")
    versions = keys.versions_key("r3", "all", "all")
    assert not await redis.hexists(versions, "s5") and not await redis.hexists(versions, "s6")
    names = keys.names_key("r3")
    assert not await redis.hexists(names, "s5") and not await redis.hexists(names, "s6")
    assert await redis.hexists(names, "s7")

    async def delete_board(done: int, total: int) -> None:
        if done == 500:
            await moderation.delete_board(redis, pool, "r3")

    await rebuild.rebuild_board(
        redis, pool, board, retention=2, progress=delete_board, chunk_rows=500
    )
    assert [k async for k in redis.scan_iter(match=keys.board_pattern("r3"))] == []


async def test_names_written_when_the_board_has_none_or_redis_lost_it(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """A rebuild writes the board's names when it has no names hash; over one that is there
    it leaves the names to the consumers (unless told to write them); a cold start writes
    them even when consumers have put a few names back since Redis lost the board."""
    await make_board(client, "r-names", windows=["all", "daily"])
    today = periods.period_id("daily", datetime.now(UTC))
    await seed(pg, "r-names", "all", "all", 300)
    await seed(pg, "r-names", "daily", today, 20)
    await pg.execute(
        "INSERT INTO player_scores (board_id, window_name, period, player_id, score, reached_at)"
        " VALUES ('r-names', 'daily', $1, 'only-today', 5, now())",
        today,
    )
    await pg.execute("INSERT INTO players (player_id, display_name) VALUES ('only-today', 'T')")
    board = await board_of(pool, "r-names")
    names = keys.names_key("r-names")

    # no names hash: every set of the call writes its players' names (the daily set's too,
    # though the `all` set wrote the names hash first)
    await rebuild.rebuild_board(redis, pool, board, retention=2, chunk_rows=100)
    assert await redis.hlen(names) == 301
    assert await redis.hget(names, "only-today") == b"T"

    await pg.execute("UPDATE players SET display_name = 'Renamed' WHERE player_id = 's5'")
    await rebuild.rebuild_board(redis, pool, board, retention=2, chunk_rows=100)
    assert await redis.hget(names, "s5") == b"Seed 5"  # left as it was
    await rebuild.rebuild_board(redis, pool, board, retention=2, chunk_rows=100, names=True)
    assert await redis.hget(names, "s5") == b"Renamed"

    # Redis lost the board; a consumer has written one name back before the recovery
    await redis.flushall()
    await redis.hset(names, "s1", "Seed 1")
    recovered = await coldstart.recover_board(redis, pool, board, 2)
    assert recovered is not None and recovered.cold
    assert await redis.hlen(names) == 301
    assert await redis.hget(names, "s5") == b"Renamed"
    assert await redis.hget(names, "only-today") == b"T"


@pytest.mark.parametrize(("order", "ties"), [("desc", "earliest"), ("asc", "shared")])
async def test_rebuild_writes_what_the_consumer_path_writes(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    pool: asyncpg.Pool,
    order: str,
    ties: str,
) -> None:
    """Postgres formats the rebuild's Redis arguments: members (earliest ties: reached_ms
    from the float timestamp, as the consumer computes it, at millisecond edges), stored
    scores, versions, tombstones and names (UTF-8 byte lengths) must be exactly what the
    consumer path writes, so re-applying the same rows through the apply script changes
    nothing."""
    board_id = f"rf-{order}-{ties}"
    await make_board(client, board_id, order=order, ties=ties, windows=["all"])
    base = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    micros = [0, 1, 999, 1_000, 1_001, 123_456, 999_000, 999_999, 500_000, 1_000]
    names = [
        "Zoë",
        "名前",
        "plain",
        None,
        "emoji 🎮",
        "tab\tand\\back",
        "$5\r\nx",
        "",
        "\x01\x02|\x01",
        "B",
    ]
    rows = []
    for i, (us, name) in enumerate(zip(micros, names, strict=True)):
        player = f"u{i}"
        reached = datetime.fromtimestamp(base + i, UTC).replace(microsecond=us)
        score = [-(2**53 - 1), 2**53 - 1, 0, 7, 7, 7, -3, 100, 55, 1][i]
        rows.append((player, score, 1 + i % 4, reached, name))
    await pg.executemany(
        "INSERT INTO player_scores (board_id, window_name, period, player_id, score, version,"
        " reached_at) VALUES ($1, 'all', 'all', $2, $3, $4, $5)",
        [(board_id, p, s, v, r) for p, s, v, r, _ in rows],
    )
    await pg.executemany(
        "INSERT INTO players (player_id, display_name, banned) VALUES ($1, $2, $3)",
        [(p, n, p == "u9") for p, _, _, _, n in rows],
    )
    board = await board_of(pool, board_id)
    await rebuild.rebuild_board(redis, pool, board, retention=2, chunk_rows=3)

    set_key = keys.set_key(board_id, "all", "all")
    versions = keys.versions_key(board_id, "all", "all")
    stored_names = await redis.hgetall(keys.names_key(board_id))
    for player, score, version, reached, name in rows:
        member = keys.member(board.ties, player, int(reached.timestamp() * 1000))
        if player == "u9":  # banned: a tombstone, no member, no name from the rebuild
            assert await redis.hget(versions, player) == f"{version}|".encode()
            assert await redis.zscore(set_key, member) is None
            assert player.encode() not in stored_names
            continue
        assert await redis.zscore(set_key, member) == (-score if order == "desc" else score)
        expected = f"{version}|{member}" if ties == "earliest" else str(version)
        assert await redis.hget(versions, player) == expected.encode()
        if name is None:
            assert player.encode() not in stored_names
        else:
            assert stored_names[player.encode()] == name.encode()
    assert await redis.zcard(set_key) == len(rows) - 1

    # the consumer path writing the same rows with a newer version leaves the set as it was
    before = await redis.zrange(set_key, 0, -1, withscores=True)
    records = await pg.fetch(
        "UPDATE player_scores SET version = version + 1 WHERE board_id = $1"
        " RETURNING player_id, score, version, reached_at,"
        " (SELECT banned FROM players pl WHERE pl.player_id = player_scores.player_id) AS banned",
        board_id,
    )
    again = rebuild.cache_rows(board, "all", "all", records)
    script = rankcache.apply_script(redis)
    assert await rankcache.apply_rows(redis, script, {board_id: board}, again, 2) == len(rows)
    assert await redis.zrange(set_key, 0, -1, withscores=True) == before


async def test_rebuild_on_a_pool_of_one_connection(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
) -> None:
    """With a second connection the two streams (members, hash fields) run side by side; a
    pool of one connection runs them one after the other, with the same result."""
    spec = await make_board(client, "r-one", windows=["all"])
    await seed(pg, "r-one", "all", "all", 2_000)
    await pg.execute("UPDATE players SET banned = true WHERE player_id = 's3'")
    small = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    assert small is not None
    try:
        board = await board_of(small, "r-one")
        report = await rebuild.rebuild_board(redis, small, board, retention=2, chunk_rows=300)
    finally:
        await small.close()
    assert report.rows == 2_000 and report.sets[0].ranked == 1_999
    expected = await pg_set(pg, "r-one", "all", "all")
    del expected["s3"]
    assert await redis_set(redis, spec, "all", "all") == expected
    assert await redis.hlen(keys.versions_key("r-one", "all", "all")) == 2_000
    assert await redis.hget(keys.names_key("r-one"), "s10") == b"Seed 10"
    assert await temp_keys(redis, "r-one") == []
