"""Auth and rate limits: 401/403/429 as problem details with their headers, limits per
route class, per player, per key and per client IP, and limits that hold across two
granian worker processes sharing Redis."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.mmap_dict import MmapedDict
from redis.asyncio import Redis

from service import apikeys
from service.app import create_app
from service.ratelimit import RateLimits, client_ip, parse_networks
from service.settings import Settings
from service.wire import ReadLink
from tests.support import ADMIN

CLIENT_KEY = "rs_test-client-key"
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
OTHER_ADMIN_KEY = "rs_test-other-admin-key"
OTHER_ADMIN = {"Authorization": f"Bearer {OTHER_ADMIN_KEY}"}


@asynccontextmanager
async def limited(settings: Settings, **limits: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The API in-process with tight limits (`limits` on top of the tight defaults), the
    client key and a second admin key stored."""
    tuned = msgspec.structs.replace(
        settings,
        **{
            "rate_limit_board_queries": "3/minute",
            "rate_limit_rank_lookups": "2/minute",
            "rate_limit_submissions": "2/minute",
            "rate_limit_per_key": "5/minute",
            "rate_limit_admin": "3/minute",
            **limits,
        },
    )
    conn = await asyncpg.connect(settings.database_url)
    await apikeys.store(conn, CLIENT_KEY, "client", "tests")
    await apikeys.store(conn, OTHER_ADMIN_KEY, "admin", "tests")
    await conn.close()
    async with AsyncTestClient(app=create_app(tuned)) as client:
        yield client


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with limited(settings) as client:
        yield client


def _assert_429(answer: httpx.Response, limit: int, what: str) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["status"] == 429 and body["limit"] == what
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert answer.headers["ratelimit-limit"] == str(limit)
    assert answer.headers["ratelimit-remaining"] == "0"
    assert 0 <= int(answer.headers["ratelimit-reset"]) <= 60


async def test_401_and_403_are_problems(tight: AsyncTestClient) -> None:  # type: ignore[type-arg]
    anonymous = await tight.post("/v1/leaderboards", json={"id": "x"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    unknown = await tight.post(
        "/v1/leaderboards", json={"id": "x"}, headers={"Authorization": "Bearer rs_nope"}
    )
    assert unknown.status_code == 401
    wrong_role = await tight.post("/v1/leaderboards", json={"id": "x"}, headers=CLIENT)
    assert wrong_role.status_code == 403
    assert wrong_role.json()["status"] == 403
    no_key_submit = await tight.post(
        "/v1/leaderboards/x/scores", json={"player_id": "p", "score": 1}
    )
    assert no_key_submit.status_code == 401


async def test_board_queries_per_ip_with_ratelimit_headers(tight: AsyncTestClient) -> None:  # type: ignore[type-arg]
    remaining = []
    for _ in range(3):
        answer = await tight.get("/v1/leaderboards")
        assert answer.status_code == 200
        assert answer.headers["ratelimit-limit"] == "3"
        remaining.append(int(answer.headers["ratelimit-remaining"]))
    assert remaining == [2, 1, 0]
    _assert_429(await tight.get("/v1/leaderboards"), 3, "board_queries")
    # Rank lookups are another class, with their own budget.
    player = await tight.get("/v1/leaderboards/nope/players/p1")
    assert player.status_code == 404
    assert player.headers["ratelimit-limit"] == "2"


async def test_submissions_per_board_and_player(tight: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert (
        await tight.post("/v1/leaderboards", json={"id": "rl"}, headers=ADMIN)
    ).status_code == 201
    url = "/v1/leaderboards/rl/scores"
    for score in (1, 2):
        answer = await tight.post(url, json={"player_id": "p1", "score": score}, headers=CLIENT)
        assert answer.status_code == 202
    _assert_429(
        await tight.post(url, json={"player_id": "p1", "score": 3}, headers=CLIENT),
        2,
        "submissions",
    )
    other = await tight.post(url, json={"player_id": "p2", "score": 3}, headers=CLIENT)
    assert other.status_code == 202  # another player has their own budget


async def test_per_key_limit_spans_routes(tight: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert (
        await tight.post("/v1/leaderboards", json={"id": "rk"}, headers=ADMIN)
    ).status_code == 201
    url = "/v1/leaderboards/rk/scores"
    statuses = [
        (await tight.post(url, json={"player_id": f"p{i}", "score": i}, headers=CLIENT)).status_code
        for i in range(5)
    ]
    assert statuses == [202] * 5
    _assert_429(
        await tight.post(url, json={"player_id": "p9", "score": 1}, headers=CLIENT), 5, "per_key"
    )
    # Another key is not affected.
    fresh = await tight.post(url, json={"player_id": "p9", "score": 1}, headers=ADMIN)
    assert fresh.status_code == 202


async def test_admin_routes_per_admin_key(tight: AsyncTestClient) -> None:  # type: ignore[type-arg]
    # Three admin routes of both modules share one budget of 3 per admin key.
    created = await tight.post("/v1/leaderboards", json={"id": "ra"}, headers=ADMIN)
    assert created.status_code == 201
    assert created.headers["ratelimit-limit"] == "3"  # the tightest: admin, not per_key (5)
    assert created.headers["ratelimit-remaining"] == "2"
    assert (await tight.get("/v1/admin/jobs/nope", headers=ADMIN)).status_code == 404
    patched = await tight.patch("/v1/leaderboards/ra", json={"title": "A"}, headers=ADMIN)
    assert patched.status_code == 200
    assert patched.headers["ratelimit-remaining"] == "0"
    refused = await tight.get("/v1/admin/dead-letters", headers=ADMIN)
    _assert_429(refused, 3, "admin")
    assert "admin limit of 3" in refused.json()["detail"]
    assert (await tight.post("/v1/admin/players/p1/ban", headers=ADMIN)).status_code == 429
    # Another admin key has its own budget.
    assert (await tight.get("/v1/admin/dead-letters", headers=OTHER_ADMIN)).status_code == 200
    # Keys that may not use admin routes are refused as before, not counted.
    assert (await tight.get("/v1/admin/dead-letters", headers=CLIENT)).status_code == 403
    unknown = {"Authorization": "Bearer rs_nope"}
    assert (await tight.get("/v1/admin/dead-letters", headers=unknown)).status_code == 401
    # Routes that are not admin routes are not in the admin budget of that key.
    url = "/v1/leaderboards/ra/scores"
    submitted = await tight.post(url, json={"player_id": "p", "score": 1}, headers=ADMIN)
    assert submitted.status_code == 202


async def _xlen(redis: Redis, settings: Settings) -> int:
    return int(await redis.xlen(settings.stream_key))


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_batch_items_count_per_player_all_or_nothing(
    settings: Settings, redis: Redis, strategy: str
) -> None:
    async with limited(
        settings, rate_limit_strategy=strategy, rate_limit_per_key="100/minute"
    ) as api:
        for board in ("rb", "rc"):
            created = await api.post("/v1/leaderboards", json={"id": board}, headers=ADMIN)
            assert created.status_code == 201

        async def batch(*items: tuple[str, str]) -> httpx.Response:
            body = {"submissions": [{"board_id": b, "player_id": p, "score": 1} for b, p in items]}
            answer: httpx.Response = await api.post("/v1/scores/batch", json=body, headers=CLIENT)
            return answer

        async def single(board: str, player: str) -> int:
            url = f"/v1/leaderboards/{board}/scores"
            answer = await api.post(url, json={"player_id": player, "score": 1}, headers=CLIENT)
            return answer.status_code

        # p1 twice on rb uses its whole budget of 2; on rc p1 has another budget.
        accepted = await batch(("rb", "p1"), ("rb", "p1"), ("rc", "p1"), ("rb", "p2"))
        assert accepted.status_code == 202, accepted.text
        assert await _xlen(redis, settings) == 4

        # One item over the limit refuses the batch, names that item, counts nothing.
        refused = await batch(("rb", "p3"), ("rb", "p1"), ("rb", "p4"))
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["limit"] == "submissions"
        assert problem["field"] == "submissions[1].player_id"
        assert "'p1'" in problem["detail"] and "'rb'" in problem["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-limit"] == "2"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert await _xlen(redis, settings) == 4  # nothing was put on the stream

        # More items of one player than the limit allows: refused although none is counted.
        crowded = await batch(("rb", "p5"), ("rb", "p5"), ("rb", "p5"))
        assert crowded.status_code == 429
        assert crowded.json()["field"] == "submissions[0].player_id"
        assert crowded.headers["ratelimit-remaining"] == "2"
        # A batch refused for an unknown board counts nothing either.
        unknown = await batch(("rb", "p6"), ("nope", "p6"))
        assert unknown.status_code == 404
        assert await _xlen(redis, settings) == 4

        # p3, p4, p5 and p6 were counted in none of the refused batches: two each still fit.
        for player in ("p3", "p4", "p5", "p6"):
            assert [await single("rb", player) for _ in range(2)] == [202, 202], player
        # Batch items and single submissions share one budget per board and player.
        assert await single("rb", "p1") == 429
        assert await single("rc", "p1") == 202
        assert (
            await batch(
                ("rc", "p1"),
            )
        ).status_code == 429
        assert await _xlen(redis, settings) == 4 + 8 + 1


def test_client_ip_trusts_the_header_only_from_trusted_proxies() -> None:
    proxies = parse_networks("10.0.0.0/8, 192.0.2.1")
    header = {"x-forwarded-for": "203.0.113.7, 10.0.0.5"}
    assert client_ip("10.1.1.1", header, proxies, "x-forwarded-for") == "203.0.113.7"
    assert client_ip("192.0.2.1", header, proxies, "x-forwarded-for") == "203.0.113.7"
    assert client_ip("198.51.100.2", header, proxies, "x-forwarded-for") == "198.51.100.2"
    assert client_ip("10.1.1.1", {}, proxies, "x-forwarded-for") == "10.1.1.1"
    assert client_ip("10.1.1.1", {"x-forwarded-for": "junk"}, proxies, "x-forwarded-for") == (
        "10.1.1.1"
    )
    assert client_ip("10.1.1.1", header, [], "x-forwarded-for") == "10.1.1.1"
    real_ip = {"x-real-ip": "203.0.113.9"}
    assert client_ip("10.1.1.1", real_ip, proxies, "X-Real-IP") == "203.0.113.9"


def served_per_process(folder: Path, route: str) -> list[float]:
    """Requests to `route` counted in each process's multiprocess counter file."""
    out = []
    for path in sorted(folder.glob("counter_*.db")):
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _name, sample, labels, _help = json.loads(key)
            if sample == "rankstream_http_requests_total" and labels.get("route") == route:
                total += value
        if total:
            out.append(total)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_api(spawn: Callable[..., Any], tmp_path: Path, workers: int = 2, **env: str) -> str:
    """`rankstream api` with granian workers on a free port; its base URL once ready."""
    port = free_port()
    proc = spawn(
        "api",
        env_overrides={
            "RANKSTREAM_PORT": str(port),
            "RANKSTREAM_API_WORKERS": str(workers),
            "RANKSTREAM_METRICS_DIR": str(tmp_path / "metrics"),
            **env,
        },
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the API exited"
            try:
                if (await http.get(url + "/health/ready")).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the API did not become ready")


async def test_limits_hold_across_two_worker_processes(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    url = await start_api(spawn, tmp_path, RANKSTREAM_RATE_LIMIT_BOARD_QUERIES="40/minute")
    # No keep-alive: every request is a new connection, spread over both workers.
    no_reuse = httpx.Limits(max_keepalive_connections=0, max_connections=16)
    async with httpx.AsyncClient(limits=no_reuse, timeout=10) as http:
        answers = await asyncio.gather(*(http.get(url + "/v1/leaderboards") for _ in range(120)))
        metrics = (await http.get(url + "/metrics")).text
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 40, statuses
    assert statuses.count(429) == 80
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["ratelimit-limit"] == "40"
    assert int(refused.headers["retry-after"]) >= 1
    # Both workers answered: each worker's own metrics file counts some of the requests
    # (handed over within a second, service.metrics.flush_periodically).
    deadline = time.monotonic() + 5
    while sum(served := served_per_process(tmp_path / "metrics", "/v1/leaderboards")) < 120:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(served) == 2 and all(n > 0 for n in served), served
    assert sum(served) == 120
    assert 'rankstream_rate_limited_total{limit="board_queries"} 80.0' in metrics


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "moving-window", "fixed-window"])
@pytest.mark.parametrize("on_link", [False, True], ids=["redis-py", "read-link"])
async def test_pipelined_hit_counts_as_the_library_and_survives_lost_scripts(
    settings: Settings, redis: Redis, on_link: bool, strategy: str
) -> None:
    link = ReadLink(settings.redis_url) if on_link else None
    limits = RateLimits(
        msgspec.structs.replace(
            settings, rate_limit_rank_lookups="3/minute", rate_limit_strategy=strategy
        ),
        redis,
        link,
    )
    assert limits.pipelined is not None  # one round trip a check
    assert limits.pipelined.link is link
    item = limits.items["rank_lookups"][0]
    try:
        check = [("rank_lookups", "203.0.113.9")]
        first = await limits.check(check)
        assert first is not None and first.allowed and first.remaining == 2
        assert 59 <= first.reset_s <= 60
        # Redis no longer knows the hit script (restarted, SCRIPT FLUSH): the library's
        # own calls load it again, and the count goes on.
        bridge = limits.pipelined.bridge
        script = {
            "moving-window": bridge.lua_acquire_moving_window,
            "sliding-window-counter": bridge.lua_acquire_sliding_window,
            "fixed-window": bridge.lua_incr_expire,
        }[strategy]
        script.sha = "0" * 40
        second = await limits.check(check)
        assert second is not None and second.allowed and second.remaining == 1
        third = await limits.check(check)
        assert third is not None and third.allowed and third.remaining == 0
        refused = await limits.check(check)
        assert refused is not None and not refused.allowed and refused.remaining == 0
        stats = await limits.limiter.get_window_stats(item, "rank_lookups", "203.0.113.9")
        assert stats.remaining == 0
        if link is not None:  # the checks went out on the link
            assert any(conn is not None for conn in link._connections)
    finally:
        await limits.close()
        if link is not None:
            await link.aclose()


async def test_sliding_window_weighs_the_previous_window_as_the_library(
    settings: Settings, redis: Redis
) -> None:
    limits = RateLimits(
        msgspec.structs.replace(settings, rate_limit_rank_lookups="4 per 2 second"), redis
    )
    assert limits.pipelined is not None  # the default: the sliding window counter
    item = limits.items["rank_lookups"][0]
    who = "203.0.113.10"
    check = [("rank_lookups", who)]
    try:
        for left in (3, 2, 1):
            decision = await limits.check(check)
            assert decision is not None and decision.allowed and decision.remaining == left
            assert 1 <= decision.reset_s <= 2  # when this window ends
        # The 3 hits now belong to the previous window, weighed by its overlap with the
        # sliding one (~0.97): floor(3 * 0.97) = 2 of the 4 are taken.
        await asyncio.sleep(2.05)
        first = await limits.check(check)
        stats = await limits.limiter.get_window_stats(item, "rank_lookups", who)
        assert first is not None and first.allowed
        assert first.remaining == stats.remaining == 1  # 4 - floor(3 * 0.97 + 1)
        second = await limits.check(check)
        assert second is not None and second.allowed and second.remaining == 0
        refused = await limits.check(check)
        assert refused is not None and not refused.allowed
    finally:
        await limits.close()
