"""Stream order survives the consumer's overlap: the next batch is read while one is being
recorded, and a full batch's Postgres work runs in lanes. A key's events must still take effect
in stream order, which `latest` exposes: with equal acceptance times, the later entry wins."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from consumers import lanes
from consumers.app import Worker
from consumers.pipeline import Entry, Persisted
from service import scores, stream
from service.models import ScoreEvent
from service.settings import Settings
from tests.support import drained, pg_set, redis_set
from tests.test_ingest import make_board


@pytest.mark.parametrize("batch_size", [3, 2 * lanes.MIN_LANE_EVENTS + 50])
async def test_a_keys_events_take_effect_in_stream_order_across_batches(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
    batch_size: int,
) -> None:
    board = await make_board(
        client, f"order{batch_size}", operator="latest", order="desc", windows=["all"]
    )
    at = scores.now_ms()  # one acceptance time for all: only stream order decides
    players = [f"p{i}" for i in range(8)]
    events = [
        ScoreEvent(
            event_id=f"o-{n}",
            board_id=board["id"],
            player_id=players[n % 8],
            score=n,
            accepted_ms=at,
        )
        for n in range(1_000)
    ]
    # Entries land before the consumer starts, so it reads full batches back to back.
    for start in range(0, len(events), 50):
        await stream.publish(redis, settings.stream_key, events[start : start + 50])
    spawn("consume", env_overrides={"RANKSTREAM_BATCH_SIZE": str(batch_size)})
    await drained(redis, settings)
    last = {e.player_id: e.score for e in events}  # each player's last entry in the stream
    assert await pg_set(pg, board["id"], "all", "all") == last
    assert await redis_set(redis, board, "all", "all") == last


async def test_a_reader_batch_is_recorded_only_after_the_one_before_it(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
) -> None:
    board = await make_board(client, "order2", operator="latest", order="desc", windows=["all"])
    # Batches of 4 are full ones: the next is read while one is being recorded.
    worker = Worker(msgspec.structs.replace(settings, batch_size=4), "order-test")
    await worker.start()
    spans: list[tuple[bytes, float, float]] = []  # first entry id, recording start, end
    record = worker.pipeline.persist
    delays = random.Random(7)
    loop = asyncio.get_running_loop()

    async def slowed(entries: list[Entry]) -> Persisted:
        # Uneven recording times: a batch started too early would overtake the one before.
        start = loop.time()
        await asyncio.sleep(delays.choice([0.0, 0.0, 0.005, 0.02]))
        persisted = await record(entries)
        spans.append((entries[0][0], start, loop.time()))
        return persisted

    worker.pipeline.persist = slowed  # type: ignore[method-assign]
    at = scores.now_ms()
    events = [
        ScoreEvent(event_id=f"r-{n}", board_id="order2", player_id=f"p{n % 5}", score=n,
                   accepted_ms=at)
        for n in range(120)
    ]  # fmt: skip
    await stream.publish(redis, settings.stream_key, events)
    try:
        while True:
            reply: Any = await redis.xreadgroup(
                settings.consumer_group, worker.name, {settings.stream_key: ">"}, count=4
            )
            if not reply:
                break
            await worker.handle(list(reply[0][1]), claimed=False)
        await worker.settle()
    finally:
        await worker.stop()
    ids = [tuple(int(part) for part in s[0].split(b"-")) for s in spans]
    assert ids == sorted(ids)
    assert all(later[1] >= earlier[2] for earlier, later in itertools.pairwise(spans))
    last = {e.player_id: e.score for e in events}
    assert await pg_set(pg, "order2", "all", "all") == last
    assert await redis_set(redis, board, "all", "all") == last
    await drained(redis, settings)
