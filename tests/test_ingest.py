"""The ingest pipeline end to end: API -> stream -> real consumer processes -> Postgres + sets."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import stream
from service.models import ScoreEvent
from service.settings import Settings
from tests.support import ADMIN, Model, drained, pg_set, redis_order, redis_set

CONFIGS = [
    {"operator": op, "order": order, "ties": ties, "windows": windows}
    for op in ("best", "latest", "increment")
    for order in ("desc", "asc")
    for ties, windows in (("shared", ["all", "daily"]), ("earliest", ["weekly", "monthly"]))
]


async def make_board(client: AsyncTestClient, board_id: str, **config: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    answer = await client.post("/v1/leaderboards", json={"id": board_id, **config}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def submit_all(client: AsyncTestClient, items: list[dict[str, Any]]) -> list[str]:  # type: ignore[type-arg]
    ids: list[str] = []
    for start in range(0, len(items), 500):
        answer = await client.post(
            "/v1/scores/batch", json={"submissions": items[start : start + 500]}, headers=ADMIN
        )
        assert answer.status_code == 202, answer.text
        ids += answer.json()["event_ids"]
    return ids


async def accepted_at(pg: asyncpg.Connection) -> dict[str, int]:
    """event_id -> acceptance ms, as recorded (the stream itself is trimmed once processed)."""
    rows = await pg.fetch(
        "SELECT event_id, (extract(epoch FROM accepted_at) * 1000)::bigint AS ms FROM score_events"
    )
    return {r["event_id"]: r["ms"] for r in rows}


async def assert_converged(
    redis: Redis, pg: asyncpg.Connection, model: Model, boards: list[dict[str, Any]]
) -> None:
    for board in boards:
        for window in board["windows"]:
            for period in {k[2] for k in model.values if k[:2] == (board["id"], window)}:
                expected = model.set_of(board["id"], window, period)
                assert await pg_set(pg, board["id"], window, period) == expected
                assert await redis_set(redis, board, window, period) == expected
                order = await redis_order(redis, board, window, period)
                best_first = sorted(
                    expected, key=lambda p: expected[p] if board["order"] == "asc" else -expected[p]
                )
                ranked_scores = [expected[p] for p in order]
                assert ranked_scores == [expected[p] for p in best_first]


submission = st.tuples(
    st.sampled_from(["p1", "p2", "p3", "p4"]),
    st.integers(min_value=-1000, max_value=1000),
    st.booleans(),  # retry the previous event_id instead of a new one
)


async def test_every_operator_order_window_and_tie_rule(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    spawn("consume")
    model = Model()
    boards = []
    items = []
    for n, config in enumerate(CONFIGS):
        board = await make_board(client, f"b{n}", **config)
        model.boards[board["id"]] = board
        boards.append(board)
        for i in range(30):
            score = (i * 37 + n * 11) % 50 - (20 if config["operator"] == "increment" else 0)
            items.append(
                {"board_id": board["id"], "player_id": f"p{i % 7}", "score": score,
                 "event_id": f"e{n}-{i}", "display_name": f"Player {i % 7}"}
            )  # fmt: skip
    ids = await submit_all(client, items)
    retried = await submit_all(client, items[:40])  # client retries: same event_ids
    assert retried == ids[:40]
    await drained(redis, settings)
    at = await accepted_at(pg)
    for item in items:
        model.submit(item["board_id"], item["player_id"], item["score"], item["event_id"],
                     at[item["event_id"]])  # fmt: skip
    await assert_converged(redis, pg, model, boards)
    assert await pg.fetchval("SELECT count(*) FROM score_events") == len(items)
    assert await pg.fetchval("SELECT display_name FROM players WHERE player_id='p3'") == "Player 3"


@hsettings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    config=st.sampled_from(CONFIGS),
    moves=st.lists(submission, min_size=1, max_size=40),
)
async def test_random_sequences_converge_to_the_model(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
    config: dict[str, Any],
    moves: list[tuple[str, int, bool]],
) -> None:
    if not getattr(spawn, "started", False):
        spawn("consume")
        spawn.started = True
    counter = getattr(spawn, "boards", 0) + 1
    spawn.boards = counter
    board = await make_board(client, f"h{counter}", **config)
    model = Model(boards={board["id"]: board})
    items, event_ids = [], []
    for player, score, retry in moves:
        event_id = event_ids[-1] if retry and event_ids else f"h{counter}-{len(event_ids)}"
        event_ids.append(event_id)
        items.append({"board_id": board["id"], "player_id": player, "score": score,
                      "event_id": event_id})  # fmt: skip
    # Singles, one by one, so a retry may land in another consumer batch than the original.
    for item in items:
        body = {k: v for k, v in item.items() if k != "board_id"}
        answer = await client.post(f"/v1/leaderboards/{board['id']}/scores", json=body,
                                   headers=ADMIN)  # fmt: skip
        assert answer.status_code == 202, answer.text
    await drained(redis, settings)
    at = await accepted_at(pg)
    for item in items:
        model.submit(board["id"], item["player_id"], item["score"], item["event_id"],
                     at[item["event_id"]])  # fmt: skip
    await assert_converged(redis, pg, model, [board])


async def test_two_consumers_hammering_the_same_players_converge(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    boards = [
        await make_board(client, "inc", operator="increment", windows=["all", "daily"]),
        await make_board(client, "best", operator="best", order="asc", ties="earliest"),
        await make_board(client, "last", operator="latest"),
    ]
    model = Model(boards={b["id"]: b for b in boards})
    # Order-free operators from four concurrent writers, in batches.
    items = [
        {"board_id": boards[i % 2]["id"], "player_id": f"p{i % 5}", "score": (i * 7919) % 201 - 100,
         "event_id": f"x{i}"}
        for i in range(3000)
    ]  # fmt: skip
    await asyncio.gather(*(submit_all(client, items[k::4]) for k in range(4)))
    spawn("consume")
    spawn("consume")
    # `latest` while both consumers run: the last accepted value must win even when the
    # consumer holding an older one commits after the newer one.
    for i in range(150):
        item = {"player_id": f"p{i % 5}", "score": (i * 31) % 97, "event_id": f"l{i}"}
        answer = await client.post("/v1/leaderboards/last/scores", json=item, headers=ADMIN)
        assert answer.status_code == 202
        items.append({"board_id": "last", **item})
    await drained(redis, settings, timeout=60)
    at = await accepted_at(pg)
    for item in items:
        model.submit(item["board_id"], item["player_id"], item["score"], item["event_id"],
                     at[item["event_id"]])  # fmt: skip
    await assert_converged(redis, pg, model, boards)
    groups = await redis.xinfo_consumers(settings.stream_key, settings.consumer_group)
    readers = [c for c in groups if not c["name"].endswith(b"-claimer")]
    assert len(readers) == 2


async def test_kill_9_mid_batch_loses_nothing_and_applies_nothing_twice(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    board = await make_board(client, "crash", operator="increment")
    model = Model(boards={"crash": board})
    items = [
        {"board_id": "crash", "player_id": f"p{i % 50}", "score": 1 + i % 3, "event_id": f"c{i}"}
        for i in range(20_000)
    ]
    ids = await submit_all(client, items)
    victim = spawn("consume")
    # Kill it while it holds a batch: entries delivered to it and not yet acknowledged.
    while True:
        pending = (await redis.xpending(settings.stream_key, settings.consumer_group))["pending"]
        if pending and await pg.fetchval("SELECT count(*) FROM event_ids") >= 2000:
            break
        await asyncio.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    in_flight = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert in_flight["pending"] > 0
    spawn("consume")
    await drained(redis, settings, timeout=90)
    at = await accepted_at(pg)
    for item in items:
        model.submit(
            "crash", item["player_id"], item["score"], item["event_id"], at[item["event_id"]]
        )
    assert await pg.fetchval("SELECT count(*) FROM event_ids") == len(set(ids)) == 20_000
    assert await pg.fetchval("SELECT count(*) FROM score_events") == 20_000
    assert await pg.fetchval("SELECT sum(score) FROM player_scores") == sum(
        i["score"] for i in items
    )
    await assert_converged(redis, pg, model, [board])


async def test_poison_entries_are_dead_lettered_and_the_stream_keeps_flowing(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    board = await make_board(client, "ok")
    await redis.xadd(settings.stream_key, {b"e": b"\xc1 not msgpack"})
    ghost = ScoreEvent("g1", "ghost-board", "p1", 5, periods_now_ms())
    await redis.xadd(settings.stream_key, {stream.FIELD: stream.encode(ghost)})
    spawn("consume", env_overrides={"RANKSTREAM_MAX_DELIVERIES": "2"})
    answer = await client.post("/v1/leaderboards/ok/scores", json={"player_id": "a", "score": 3},
                               headers=ADMIN)  # fmt: skip
    assert answer.status_code == 202
    await drained(redis, settings, timeout=30)
    letters = await redis.xrange(settings.dead_letter_stream)
    reasons = sorted(fields[b"reason"].decode() for _, fields in letters)
    assert reasons == ["undecodable", "unknown board"]
    rows = await pg.fetch("SELECT reason, deliveries FROM dead_letters ORDER BY reason")
    assert [r["reason"] for r in rows] == ["undecodable", "unknown board"]
    assert rows[1]["deliveries"] >= 2
    assert await redis_set(redis, board, "all", "all") == {"a": 3}


def periods_now_ms() -> int:
    from service.scores import now_ms

    return now_ms()


async def test_processed_entries_are_trimmed(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    spawn: Any,
) -> None:
    await make_board(client, "trim")
    await submit_all(
        client, [{"board_id": "trim", "player_id": f"p{i}", "score": i} for i in range(1000)]
    )
    assert await redis.xlen(settings.stream_key) == 1000
    spawn("consume")
    await drained(redis, settings)
    for _ in range(100):
        if await redis.xlen(settings.stream_key) <= 1:
            break
        await asyncio.sleep(0.05)
    assert await redis.xlen(settings.stream_key) <= 1


async def test_wait_true_answers_with_the_new_and_previous_rank(
    client: AsyncTestClient,  # type: ignore[type-arg]
    spawn: Any,
) -> None:
    await make_board(client, "live")
    spawn("consume")
    for player, score in (("a", 50), ("b", 40), ("c", 30)):
        body = {"player_id": player, "score": score}
        answer = await client.post("/v1/leaderboards/live/scores?wait=true", json=body,
                                   headers=ADMIN)  # fmt: skip
        assert answer.status_code == 200, answer.text
    answer = await client.post("/v1/leaderboards/live/scores?wait=true",
                               json={"player_id": "c", "score": 45}, headers=ADMIN)  # fmt: skip
    assert answer.status_code == 200
    body = answer.json()
    assert (body["rank"], body["previous_rank"], body["score"]) == (2, 3, 45)


async def test_sigterm_finishes_and_acknowledges_the_batch_in_hand(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    await make_board(client, "term", operator="increment")
    await submit_all(
        client,
        [{"board_id": "term", "player_id": f"p{i % 9}", "score": 1} for i in range(10_000)],
    )
    consumer = spawn("consume")
    while await pg.fetchval("SELECT count(*) FROM event_ids") == 0:
        await asyncio.sleep(0.01)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    done = await pg.fetchval("SELECT count(*) FROM event_ids")
    pending = await redis.xpending(settings.stream_key, settings.consumer_group)
    assert pending["pending"] == 0  # nothing left half-done by the stopped consumer
    assert await pg.fetchval("SELECT sum(score) FROM player_scores") == done
