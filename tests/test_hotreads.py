"""The hot path (service.hotreads) answers exactly as the Litestar routes, or passes on.

Every request below goes to two apps on the same stores: one with the hot path, one
without. Status, body and the read headers must be the same; the hot path's counter says
which requests it answered itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from service import apikeys, coldstart, metrics
from service.app import create_app
from service.settings import Settings
from tests.support import ADMIN, ADMIN_KEY
from tests.test_rankings import T0, Seed, make_board, seed

COMPARED_HEADERS = ("etag", "cache-control", "x-rankstream-source", "content-type")


def answered(outcome: str = "answered") -> float:
    """How many polled reads the hot path answered itself (or passed on) in this process."""
    metrics.flush()  # the counter waits in the process until flushed
    return REGISTRY.get_sample_value("rankstream_hot_reads_total", {"outcome": outcome}) or 0.0


@pytest.fixture
async def plain(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The same API without the hot path."""
    app = create_app(msgspec.structs.replace(settings, hot_reads=False))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def _same(hot: httpx.Response, full: httpx.Response, what: str) -> None:
    assert hot.status_code == full.status_code, (what, hot.text, full.text)
    if full.headers.get("content-type", "").startswith("application/problem+json"):
        assert hot.json() == full.json(), what
    else:
        assert hot.content == full.content, what
    for name in COMPARED_HEADERS:
        assert hot.headers.get(name) == full.headers.get(name), (what, name)
    assert ("ratelimit-limit" in hot.headers) == ("ratelimit-limit" in full.headers), what
    for name in ("x-request-id", "x-content-type-options", "x-frame-options"):
        assert name in hot.headers, (what, name)


async def test_hot_path_answers_as_the_routes_do(
    client: AsyncTestClient,  # type: ignore[type-arg]
    plain: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, windows=("all", "daily"))
    seeds = [Seed(f"p{i}", (i * 7) % 5, reached_ms=T0 + i, name=f"P {i}") for i in range(30)]
    await seed(pg, redis, board, seeds)
    past = await make_board(client)  # its set is in Postgres only: the route answers it
    await seed(pg, redis, past, [Seed("x", 1)], to_redis=False)
    base = f"/v1/leaderboards/{board.id}"
    first = (await plain.get(f"{base}/top", params={"limit": 4})).json()
    cursor = first["next_cursor"]
    answerable: list[tuple[str, dict[str, Any]]] = [
        (f"{base}/top", {}),
        (f"{base}/top", {"limit": 4}),
        (f"{base}/top", {"limit": 100, "offset": 3}),
        (f"{base}/top", {"limit": 4, "cursor": cursor}),
        (f"{base}/top", {"window": "all", "period": "current", "unknown": "ignored"}),
        (f"{base}/top", {"offset": 1000}),
        (f"{base}/players/p3", {}),
        (f"{base}/players/p3", {"window": "all", "period": "all"}),
        (f"{base}/players/p0/around", {"radius": 0}),
        (f"{base}/players/p0/around", {}),
        (f"{base}/players/p29/around", {"radius": 50}),
    ]
    passed: list[tuple[str, dict[str, Any]]] = [
        (f"{base}/top", {"limit": 0}),
        (f"{base}/top", {"limit": 101}),
        (f"{base}/top", {"limit": "ten"}),
        (f"{base}/top", {"limit": "-1"}),
        (f"{base}/top", {"limit": "007"}),
        (f"{base}/top", {"limit": "+5"}),
        (f"{base}/top", {"limit": " 5"}),
        (f"{base}/top", {"cursor": "garbage"}),
        (f"{base}/top", {"cursor": cursor, "offset": 1}),
        (f"{base}/top", {"window": "weekly"}),
        (f"{base}/top", {"window": "nope"}),
        (f"{base}/top", {"period": "2026-W47"}),
        (f"{base}/top", {"window": "daily"}),  # current daily set: empty, not an error
        (f"{base}/top", {"window": "daily", "period": "previous"}),
        (f"{base}/players/nobody", {}),
        (f"{base}/players/p1/around", {"radius": 51}),
        (f"{base}/players/nobody/around", {}),
        ("/v1/leaderboards/no-such-board/top", {}),
        (f"/v1/leaderboards/{past.id}/top", {}),
        (f"/v1/leaderboards/{past.id}/players/x", {}),
    ]
    before = answered()
    for path, params in answerable:
        _same(await client.get(path, params=params), await plain.get(path, params=params), path)
    assert answered() - before == len(answerable)

    before, before_passed = answered(), answered("passed")
    for path, params in passed:
        _same(await client.get(path, params=params), await plain.get(path, params=params), path)
    repeated = f"{base}/top?limit=2&limit=3"
    _same(await client.get(repeated), await plain.get(repeated), repeated)
    assert answered() == before  # every one of them was left to Litestar
    assert answered("passed") - before_passed == len(passed) + 1

    # other GETs are not polled reads: the hot path counts them neither way
    for other in ("/health/live", "/v1/leaderboards", f"{base}/players/p1/around/x"):
        await client.get(other)
    assert (answered(), answered("passed")) == (before, before_passed + len(passed) + 1)


async def test_conditional_get_on_the_hot_path(
    client: AsyncTestClient,  # type: ignore[type-arg]
    plain: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
    for path in (f"/v1/leaderboards/{board.id}/top", f"/v1/leaderboards/{board.id}/players/a"):
        etag = (await client.get(path)).headers["etag"]
        before = answered()
        hot = await client.get(path, headers={"If-None-Match": f'"x", {etag}'})
        assert answered() == before + 1
        assert hot.status_code == 304 and hot.content == b""
        _same(hot, await plain.get(path, headers={"If-None-Match": etag}), path)
        await seed(pg, redis, board, [Seed("a", 30, version=3 if "top" in path else 4)])
        changed = await client.get(path, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag


async def test_hot_path_checks_keys_when_reads_are_private(
    settings: Settings, pg: asyncpg.Connection, redis: Redis
) -> None:
    await apikeys.store(pg, ADMIN_KEY, "admin", "tests")
    client_key = "rs_test-client-key"
    await apikeys.store(pg, client_key, "client", "tests")
    private = msgspec.structs.replace(settings, public_reads=False)
    async with AsyncTestClient(app=create_app(private)) as client:
        board = await make_board(client)
        await seed(pg, redis, board, [Seed("a", 1)])
        path = f"/v1/leaderboards/{board.id}/top"
        before = answered()
        anonymous = await client.get(path)
        wrong = await client.get(path, headers={"Authorization": "Bearer rs_nope"})
        assert answered() == before
        assert anonymous.status_code == 401 and wrong.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        for headers in (ADMIN, {"Authorization": f"Bearer {client_key}"}):
            assert (await client.get(path, headers=headers)).status_code == 200
        assert answered() == before + 2


async def test_hot_path_counts_rate_limits_and_refuses_over_them(
    settings: Settings, pg: asyncpg.Connection, redis: Redis
) -> None:
    await apikeys.store(pg, ADMIN_KEY, "admin", "tests")
    tight = msgspec.structs.replace(
        settings, rate_limit_rank_lookups="3/minute", rate_limit_board_queries="2/minute"
    )
    async with AsyncTestClient(app=create_app(tight)) as client:
        board = await make_board(client)
        await seed(pg, redis, board, [Seed("a", 1), Seed("b", 2)])
        before = answered()
        ranks = [await client.get(f"/v1/leaderboards/{board.id}/players/a") for _ in range(4)]
        tops = [await client.get(f"/v1/leaderboards/{board.id}/top") for _ in range(3)]
        assert [r.status_code for r in ranks] == [200, 200, 200, 429]
        assert [r.status_code for r in tops] == [200, 200, 429]
        assert answered() == before + 5
        assert [r.headers["ratelimit-remaining"] for r in ranks[:3]] == ["2", "1", "0"]
        refused = ranks[3]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["limit"] == "rank_lookups"


async def test_cross_origin_reads_are_left_to_litestar_cors(
    settings: Settings, pg: asyncpg.Connection, redis: Redis
) -> None:
    await apikeys.store(pg, ADMIN_KEY, "admin", "tests")
    cors = msgspec.structs.replace(settings, cors_origins="https://game.example")
    async with AsyncTestClient(app=create_app(cors)) as client:
        board = await make_board(client)
        await seed(pg, redis, board, [Seed("a", 1)])
        path = f"/v1/leaderboards/{board.id}/top"
        before = answered()
        browser = await client.get(path, headers={"Origin": "https://game.example"})
        assert browser.status_code == 200
        assert browser.headers["access-control-allow-origin"] == "https://game.example"
        assert answered() == before
        assert (await client.get(path)).status_code == 200  # no Origin: the hot path
        assert answered() == before + 1


async def test_an_etag_from_before_redis_lost_its_data_never_matches_a_new_answer(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
    path = f"/v1/leaderboards/{board.id}/top"
    old = (await client.get(path)).headers["etag"]
    await redis.flushall()  # the revision counter starts over, as after a Redis loss
    await seed(pg, redis, board, [Seed("a", 30, version=2), Seed("b", 20)])
    await redis.set(coldstart.marker_key(board.id), "done:test")  # as the recovery leaves it
    fresh = await client.get(path, headers={"If-None-Match": old})
    assert fresh.headers["etag"].split("-")[0] == old.split("-")[0]  # same counter value
    assert fresh.status_code == 200 and fresh.json()["entries"][0]["player_id"] == "a"
    assert fresh.headers["etag"] != old


async def test_a_query_that_is_not_utf8_is_a_problem_naming_the_field(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 1)])
    path = f"/v1/leaderboards/{board.id}/top"
    sent: list[dict[str, Any]] = []

    async def call() -> None:  # raw bytes no HTTP client would send
        scope = {
            "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"limit=2&window=\xff", "headers": [],
            "client": ("127.0.0.1", 1), "server": ("testserver", 80), "scheme": "http",
            "http_version": "1.1", "asgi": {"version": "3.0"}, "state": {},
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await client.app(scope, receive, send)

    before = answered()
    client.blocking_portal.call(call)
    assert answered() == before
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 422
    assert msgspec.json.decode(sent[1]["body"])["field"] == "window"


async def test_a_failing_dependency_is_left_to_litestar(
    client: AsyncTestClient,  # type: ignore[type-arg]
    plain: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 1)])
    path = f"/v1/leaderboards/{board.id}/players/a"

    async def postgres_gone(board_id: str) -> Any:
        raise asyncpg.exceptions.InterfaceError("pool is closing")

    for app in (client.app, plain.app):
        monkeypatch.setattr(app.state.services.boards, "get", postgres_gone)
    before = answered()
    hot, full = await client.get(path), await plain.get(path)
    assert answered() == before
    assert hot.status_code == full.status_code == 503
    assert hot.headers["content-type"].startswith("application/problem+json")
    assert hot.headers["retry-after"] == "1"
