"""Readiness names what is down: Postgres stopped and started again (a separate embedded
Postgres, so the session's servers are not disturbed), a missing consumer group; and the
`/health` summary with versions and the stream's backlog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import embedded, migrations
from service.app import create_app
from service.settings import Settings
from tests.support import ADMIN


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[embedded.RunningServer]:
    server = embedded.ensure_postgres(tmp_path / "pg", fsync=False)
    try:
        yield server
    finally:
        embedded.stop(server)


async def _ready_until(
    client: AsyncTestClient,  # type: ignore[type-arg]
    status: int,
    timeout: float = 15.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = await client.get("/health/ready")
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.text
            body: dict[str, Any] = answer.json()
            return body
        await asyncio.sleep(0.1)


async def test_ready_turns_503_naming_postgres_and_back(
    settings: Settings, own_postgres: embedded.RunningServer, tmp_path: Path
) -> None:
    await migrations.migrate(own_postgres.url)
    mine = msgspec.structs.replace(settings, database_url=own_postgres.url)
    async with AsyncTestClient(app=create_app(mine)) as client:
        up = await _ready_until(client, 200)
        assert up["down"] == [] and up["postgres"] == "ok"

        embedded.stop(own_postgres)
        down = await _ready_until(client, 503)
        assert down["down"] == ["postgres"]
        assert down["postgres"] == "down" and down["redis"] == "ok"
        summary = await client.get("/health")
        assert summary.status_code == 503
        assert summary.json()["versions"]["postgres"] is None

        again = embedded.ensure_postgres(tmp_path / "pg", own_postgres.port, fsync=False)
        assert again.started and again.port == own_postgres.port
        back = await _ready_until(client, 200)
        assert back["down"] == []
        embedded.stop(again)  # the fixture's pid is the old one


async def test_ready_names_a_missing_consumer_group(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
) -> None:
    await _ready_until(client, 200)
    await redis.xgroup_destroy(settings.stream_key, settings.consumer_group)
    down = await _ready_until(client, 503)
    assert down["down"] == ["consumer_group"]
    assert down["consumer_group"] == "missing"
    await redis.xgroup_create(settings.stream_key, settings.consumer_group, id="0")
    await _ready_until(client, 200)


async def test_health_summary_has_versions_and_stream_backlog(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    assert (
        await client.post("/v1/leaderboards", json={"id": "h"}, headers=ADMIN)
    ).status_code == 201
    for i in range(3):
        answer = await client.post(
            "/v1/leaderboards/h/scores", json={"player_id": f"p{i}", "score": i}, headers=ADMIN
        )
        assert answer.status_code == 202
    answer = await client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["down"] == []
    versions = body["versions"]
    assert versions["rankstream"] == "0.1.0"
    assert versions["python"].count(".") == 2
    assert versions["redis"][0].isdigit()
    assert versions["postgres"].startswith("18")
    stream = body["stream"]
    assert stream["length"] == 3
    assert stream["lag"] == 3  # no consumer runs in this test
    assert stream["pending"] == 0
