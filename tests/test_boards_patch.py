"""PATCH a board: title, bounds and metadata change at once; the rest needs a rebuild."""

from __future__ import annotations

from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service.settings import Settings
from tests.support import ADMIN


async def test_patch_changes_title_bounds_and_metadata(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
) -> None:
    created = await client.post("/v1/leaderboards", json={"id": "p", "title": "Old"}, headers=ADMIN)
    assert created.status_code == 201
    answer = await client.patch(
        "/v1/leaderboards/p",
        json={"title": "New", "max_score": 100, "metadata": {"season": 3}},
        headers=ADMIN,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["title"], body["max_score"], body["metadata"]) == ("New", 100, {"season": 3})
    assert (await client.get("/v1/leaderboards/p")).json()["title"] == "New"

    too_high = await client.post(
        "/v1/leaderboards/p/scores", json={"player_id": "a", "score": 101}, headers=ADMIN
    )
    assert too_high.status_code == 422
    assert too_high.json()["field"] == "score"
    assert await redis.xlen(settings.stream_key) == 0

    cleared = await client.patch("/v1/leaderboards/p", json={"max_score": None}, headers=ADMIN)
    assert cleared.json()["max_score"] is None
    assert cleared.json()["title"] == "New"  # fields not sent stay as they were


async def test_patch_refuses_bad_input_and_changes_nothing(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    await client.post("/v1/leaderboards", json={"id": "q", "min_score": 10}, headers=ADMIN)
    cases = [
        ({"max_score": 5}, 422, "min_score"),  # would put max below the stored min
        ({"operator": "latest"}, 422, "operator"),  # needs a rebuild, not a patch
        ({"title": 7}, 422, "title"),
    ]
    for body, status, field in cases:
        answer = await client.patch("/v1/leaderboards/q", json=body, headers=ADMIN)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["field"] == field
    assert (await client.get("/v1/leaderboards/q")).json()["max_score"] is None
    missing = await client.patch("/v1/leaderboards/nope", json={"title": "x"}, headers=ADMIN)
    assert missing.status_code == 404
    anonymous = await client.patch("/v1/leaderboards/q", json={"title": "x"})
    assert anonymous.status_code == 401
