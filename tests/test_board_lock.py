"""player_scores has no foreign key to leaderboards (sql/004): what the key's cascade and
per-row check guaranteed is kept by a lock on the board row, taken once per writing
transaction (queries.LOCK_BOARDS), and by board deletion taking that row first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from consumers.pipeline import BoardGone, Entry, Pipeline
from service import boards, moderation, queries, scores, stream
from service.connections import pg_pool
from service.models import BoardCreate, ScoreEvent
from service.settings import Settings

WAIT_S = 30.0  # bound on waiting for a state, not a speed assertion


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    made = await pg_pool(settings)
    yield made
    await made.close()


async def _until_blocked(pg: asyncpg.Connection, task: asyncio.Task[object]) -> None:
    """Until a session of this database waits for a lock, or the task has finished (which
    the test then finds wrong by what it left behind)."""
    async with asyncio.timeout(WAIT_S):
        while not task.done():
            if await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ):
                return
            await asyncio.sleep(0.01)


async def _rows_of(pg: asyncpg.Connection, board_id: str) -> dict[str, int]:
    return {
        table: await pg.fetchval(f"SELECT count(*) FROM {table} WHERE board_id = $1", board_id)
        for table in ("player_scores", "event_ids", "score_events")
    }


def _entry(board_id: str, player_id: str, score: int) -> Entry:
    event = ScoreEvent(
        event_id=str(uuid.uuid4()),
        board_id=board_id,
        player_id=player_id,
        score=score,
        accepted_ms=scores.now_ms(),
    )
    return (b"1-1", {stream.FIELD: stream.encode(event)})


async def test_deleting_a_board_waits_for_a_writer_and_then_deletes_its_rows(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection, redis: Redis
) -> None:
    await boards.create(pool, BoardCreate(id="b", windows=["all"]))
    writer = await asyncpg.connect(settings.database_url)
    try:
        tx = writer.transaction()
        await tx.start()
        assert [r["id"] for r in await writer.fetch(queries.LOCK_BOARDS, ["b"])] == ["b"]
        await writer.execute(
            "INSERT INTO player_scores (board_id, window_name, period, player_id, score,"
            " reached_at) VALUES ('b', 'all', 'all', 'p1', 5, now())"
        )
        deleting = asyncio.create_task(moderation.delete_board(redis, pool, "b"))
        await _until_blocked(pg, deleting)
        assert not deleting.done(), "the deletion did not wait for the writer's lock"
        await tx.commit()
        await asyncio.wait_for(deleting, WAIT_S)
    finally:
        await writer.close()
    assert await _rows_of(pg, "b") == {"player_scores": 0, "event_ids": 0, "score_events": 0}
    assert await pg.fetchval("SELECT count(*) FROM leaderboards WHERE id = 'b'") == 0


async def test_a_batch_for_a_board_being_deleted_fails_and_writes_nothing(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection, redis: Redis
) -> None:
    await boards.create(pool, BoardCreate(id="b", windows=["all", "daily"]))
    pipeline = Pipeline(settings, redis, pool)
    await pipeline.boards.ensure({"b"})  # the consumer knew the board when it read the batch
    deleter = await asyncpg.connect(settings.database_url)
    try:
        tx = deleter.transaction()
        await tx.start()
        # Everything of a deletion but its commit, in moderation.delete_board's order.
        assert await deleter.fetchval(queries.DELETE_BOARD, "b") == "b"
        for statement in (
            queries.DELETE_BOARD_ROWS,
            queries.DELETE_BOARD_EVENT_IDS,
            queries.DELETE_BOARD_EVENTS,
        ):
            await deleter.execute(statement, "b")
        entries = [_entry("b", f"p{i}", i) for i in range(500)]  # full batch: two lanes
        persisting = asyncio.create_task(pipeline.persist(entries))
        await _until_blocked(pg, persisting)
        await tx.commit()
        with pytest.raises(BoardGone):
            await asyncio.wait_for(persisting, WAIT_S)
    finally:
        await deleter.close()
    assert await _rows_of(pg, "b") == {"player_scores": 0, "event_ids": 0, "score_events": 0}


async def test_a_batch_for_a_deleted_board_fails_and_writes_nothing(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection, redis: Redis
) -> None:
    await boards.create(pool, BoardCreate(id="b", windows=["all"]))
    await boards.create(pool, BoardCreate(id="c", windows=["all"]))
    pipeline = Pipeline(settings, redis, pool)
    await pipeline.boards.ensure({"b", "c"})
    await moderation.delete_board(redis, pool, "b")
    with pytest.raises(BoardGone, match=r"^b$"):
        await pipeline.persist([_entry("b", "p1", 1), _entry("c", "p1", 2)])
    assert await _rows_of(pg, "b") == {"player_scores": 0, "event_ids": 0, "score_events": 0}
    assert await _rows_of(pg, "c") == {"player_scores": 0, "event_ids": 0, "score_events": 0}
    # The board's own batch goes through as before.
    outcome = (await pipeline.persist([_entry("c", "p1", 2)])).outcome
    assert outcome.new_events == 1
    assert await pg.fetchval("SELECT score FROM player_scores WHERE board_id = 'c'") == 2
