"""Bad input gets a clear problem-details answer naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service import stream
from service.models import ScoreEvent
from service.settings import Settings
from tests.support import ADMIN

MAX = 2**53 - 1

BAD_SINGLES: list[tuple[Any, int, str]] = [
    ({"player_id": "p", "score": 1.5}, 422, "score"),
    ({"player_id": "p", "score": 2.0}, 422, "score"),
    ({"player_id": "p", "score": True}, 422, "score"),
    ({"player_id": "p", "score": "10"}, 422, "score"),
    ({"player_id": "p", "score": MAX + 1}, 422, "score"),
    ({"player_id": "p", "score": -MAX - 1}, 422, "score"),
    ({"player_id": "p", "score": 1001}, 422, "score"),  # above the board's max_score
    ({"player_id": "p", "score": -1}, 422, "score"),  # below the board's min_score
    ({"player_id": "p p", "score": 1}, 422, "player_id"),
    ({"player_id": "x" * 129, "score": 1}, 422, "player_id"),
    ({"player_id": "", "score": 1}, 422, "player_id"),
    ({"score": 1}, 422, "player_id"),
    ({"player_id": "p"}, 422, "score"),
    ({"player_id": "p", "score": 1, "display_name": "n" * 65}, 422, "display_name"),
    ({"player_id": "p", "score": 1, "metadata": {"blob": "x" * 2100}}, 422, "metadata"),
    ({"player_id": "p", "score": 1, "metadata": [1, 2]}, 422, "metadata"),
    ({"player_id": "p", "score": 1, "event_id": "has space"}, 422, "event_id"),
    ({"player_id": "p", "score": 1, "cheat": True}, 422, "cheat"),
    ([1, 2, 3], 422, "body"),
]


@pytest.fixture
async def board(client: AsyncTestClient) -> str:  # type: ignore[type-arg]
    answer = await client.post(
        "/v1/leaderboards",
        json={"id": "bounded", "min_score": 0, "max_score": 1000},
        headers=ADMIN,
    )
    assert answer.status_code == 201
    return "bounded"


@pytest.mark.parametrize(("body", "status", "field"), BAD_SINGLES)
async def test_bad_single_submission_is_refused_and_changes_nothing(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    board: str,
    body: Any,
    status: int,
    field: str,
) -> None:
    before = await redis.xlen(settings.stream_key)
    answer = await client.post(f"/v1/leaderboards/{board}/scores", json=body, headers=ADMIN)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == status
    if field != "body":
        assert problem["field"] == field, problem
    assert "Traceback" not in answer.text
    assert await redis.xlen(settings.stream_key) == before


async def test_malformed_json_is_400(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    board: str,
) -> None:
    answer = await client.post(
        f"/v1/leaderboards/{board}/scores",
        content=b'{"player_id": "p", "score": NaN}',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert await redis.xlen(settings.stream_key) == 0


async def test_unknown_board_is_404_naming_it(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
) -> None:
    answer = await client.post(
        "/v1/leaderboards/nope/scores", json={"player_id": "p", "score": 1}, headers=ADMIN
    )
    assert answer.status_code == 404
    assert answer.json()["field"] == "board_id"
    assert await redis.xlen(settings.stream_key) == 0


async def test_a_batch_with_one_bad_item_accepts_nothing(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    board: str,
) -> None:
    good = [{"board_id": board, "player_id": f"p{i}", "score": i} for i in range(10)]
    for bad, field in (
        ({"board_id": board, "player_id": "q", "score": 5000}, "submissions[10].score"),
        ({"board_id": "ghost", "player_id": "q", "score": 5}, "submissions[10].board_id"),
        ({**good[0], "event_id": "dup"}, None),
    ):
        items = [*good, bad]
        if field is None:  # the same event_id twice in one batch
            items = [{**good[1], "event_id": "dup"}, *good[2:], bad]
            field = "submissions[9].event_id"
        answer = await client.post("/v1/scores/batch", json={"submissions": items}, headers=ADMIN)
        assert answer.status_code in (404, 422), answer.text
        assert answer.json()["field"] == field
    too_many = [{"board_id": board, "player_id": "p", "score": 1}] * 501
    answer = await client.post("/v1/scores/batch", json={"submissions": too_many}, headers=ADMIN)
    assert answer.status_code == 422
    assert answer.json()["field"] == "submissions"
    assert await redis.xlen(settings.stream_key) == 0
    answer = await client.post("/v1/scores/batch", json={"submissions": good}, headers=ADMIN)
    assert answer.status_code == 202
    assert len(answer.json()["event_ids"]) == 10
    assert await redis.xlen(settings.stream_key) == 10


async def test_client_event_id_is_kept(
    client: AsyncTestClient,  # type: ignore[type-arg]
    board: str,
) -> None:
    body = {"player_id": "p", "score": 3, "event_id": "match-42:p"}
    answer = await client.post(f"/v1/leaderboards/{board}/scores", json=body, headers=ADMIN)
    assert answer.status_code == 202
    assert answer.json() == {"event_id": "match-42:p"}


async def test_submissions_need_a_client_key(
    client: AsyncTestClient,  # type: ignore[type-arg]
    board: str,
) -> None:
    body = {"player_id": "p", "score": 3}
    answer = await client.post(f"/v1/leaderboards/{board}/scores", json=body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer rs_not-a-key"}
    answer = await client.post(f"/v1/leaderboards/{board}/scores", json=body, headers=bad)
    assert answer.status_code == 401


async def test_full_stream_answers_503_with_retry_after(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
    board: str,
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(settings.max_stream_lag + 1):
            pipe.xadd(settings.stream_key, {b"e": b"x"})
        await pipe.execute()
    answer = await client.post(
        f"/v1/leaderboards/{board}/scores", json={"player_id": "p", "score": 1}, headers=ADMIN
    )
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert await redis.xlen(settings.stream_key) == settings.max_stream_lag + 1


async def test_board_creation_validates(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    cases = [
        ({"id": "Bad Id"}, "id"),
        ({"id": "b", "order": "sideways"}, "order"),
        ({"id": "b", "operator": "max"}, "operator"),
        ({"id": "b", "windows": []}, "windows"),
        ({"id": "b", "windows": ["hourly"]}, "windows[0]"),
        ({"id": "b", "windows": ["all", "all"]}, "windows"),
        ({"id": "b", "ties": "random"}, "ties"),
        ({"id": "b", "min_score": 10, "max_score": 1}, "min_score"),
    ]
    for body, field in cases:
        answer = await client.post("/v1/leaderboards", json=body, headers=ADMIN)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["field"] == field, (body, answer.json())
    assert (await client.get("/v1/leaderboards")).json() == {"leaderboards": []}
    answer = await client.post("/v1/leaderboards", json={"id": "b"}, headers=ADMIN)
    assert answer.status_code == 201
    answer = await client.post("/v1/leaderboards", json={"id": "b"}, headers=ADMIN)
    assert answer.status_code == 409
    answer = await client.post("/v1/leaderboards", json={"id": "c"})
    assert answer.status_code == 401


async def test_a_batch_lands_whole_in_order_or_not_at_all(redis: Redis) -> None:
    events = [
        ScoreEvent(
            event_id=f"e{i}", board_id="b", player_id=f"p{i % 7}", score=i, accepted_ms=1_000 + i
        )
        for i in range(120)
    ]
    await stream.publish(redis, "t:batch", events)
    await stream.publish(redis, "t:batch", events[:1])
    entries = await redis.xrange("t:batch")
    assert [stream.decode(fields) for _, fields in entries] == [*events, events[0]]
    # a stream key that is not a stream: the first XADD fails, and nothing is written
    await redis.set("t:not-a-stream", "x")
    with pytest.raises(ResponseError):
        await stream.publish(redis, "t:not-a-stream", events)
    assert await redis.get("t:not-a-stream") == b"x"
