"""Request hygiene: security headers, request ids (echoed, generated, carried into the
stream), 413 as problem details, CORS, no-store on admin routes, JSON access logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import logs, stream
from service.app import create_app
from service.hygiene import Hygiene, normalize_request_id
from service.settings import Settings
from tests.support import ADMIN

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


async def _board(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    answer = await client.post("/v1/leaderboards", json={"id": "hy"}, headers=ADMIN)
    assert answer.status_code == 201, answer.text


@pytest.fixture
async def small_client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    tuned = msgspec.structs.replace(
        settings, max_body_bytes=2_000, cors_origins="https://game.example"
    )
    async with AsyncTestClient(app=create_app(tuned)) as client:
        yield client


async def test_security_headers_on_every_answer(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    for path, status in [
        ("/health/live", 200),
        ("/v1/leaderboards/nope", 404),  # a problem from a route
        ("/no/such/route", 404),  # a problem from the router
    ]:
        answer = await client.get(path)
        assert answer.status_code == status
        for name, value in SECURITY.items():
            assert answer.headers[name] == value, (path, name)
        assert "strict-transport-security" not in answer.headers  # plain http
    problem = await client.get("/v1/leaderboards/nope")
    assert problem.headers["content-type"].startswith("application/problem+json")


async def test_hsts_only_over_https(settings: Settings) -> None:
    async with AsyncTestClient(
        app=create_app(settings), base_url="https://testserver.local"
    ) as client:
        answer = await client.get("/health/live")
    assert answer.headers["strict-transport-security"].startswith("max-age=31536000")


def test_hsts_behind_a_trusted_proxy_only() -> None:
    proxy = Hygiene(app=None, settings=Settings(trusted_proxies="10.0.0.0/8"))  # type: ignore[arg-type]
    forwarded = [(b"x-forwarded-proto", b"https")]
    trusted = {"scheme": "http", "client": ("10.1.2.3", 5000), "headers": forwarded}
    stranger = {"scheme": "http", "client": ("192.0.2.9", 5000), "headers": forwarded}
    assert proxy._https(trusted) is True  # type: ignore[arg-type]
    assert proxy._https(stranger) is False  # type: ignore[arg-type]


async def test_request_id_is_echoed_or_made(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    given = await client.get("/health/live", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    made = await client.get("/health/live")
    assert len(made.headers["x-request-id"]) == 32
    other = await client.get("/health/live")
    assert other.headers["x-request-id"] != made.headers["x-request-id"]
    for insane in ["has spaces", "x" * 200, "<script>", ""]:
        answer = await client.get("/health/live", headers={"X-Request-ID": insane})
        assert answer.headers["x-request-id"] != insane
        assert len(answer.headers["x-request-id"]) == 32
    unknown = await client.get("/no/such/route", headers={"X-Request-ID": "r-404"})
    assert unknown.headers["x-request-id"] == "r-404"


def test_normalize_request_id() -> None:
    assert normalize_request_id("abc-DEF_1") == "abc-DEF_1"
    assert normalize_request_id(None) != normalize_request_id(None)
    assert normalize_request_id("a\nb") != "a\nb"


async def test_request_id_travels_into_the_stream(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    settings: Settings,
) -> None:
    await _board(client)
    url = "/v1/leaderboards/hy/scores"
    body = {"player_id": "p1", "score": 5}
    sane = await client.post(url, json=body, headers=ADMIN | {"X-Request-ID": "req-1"})
    assert sane.status_code == 202
    insane = await client.post(url, json=body, headers=ADMIN | {"X-Request-ID": "bad id!"})
    assert insane.status_code == 202
    none = await client.post("/v1/scores/batch", json={"submissions": [body | {"board_id": "hy"}]},
                             headers=ADMIN)  # fmt: skip
    assert none.status_code == 202
    ids = [stream.decode(f).request_id for _, f in await redis.xrange(settings.stream_key)]
    assert ids == ["req-1", insane.headers["x-request-id"], none.headers["x-request-id"]]


async def test_oversized_body_is_413_problem(small_client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    await _board(small_client)
    big = {"player_id": "p1", "score": 1, "metadata": {"pad": "x" * 5_000}}
    answer = await small_client.post("/v1/leaderboards/hy/scores", json=big, headers=ADMIN)
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["status"] == 413
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_cors_off_by_default_and_on_when_configured(
    client: AsyncTestClient,  # type: ignore[type-arg]
    small_client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    origin = {"Origin": "https://game.example"}
    off = await client.get("/v1/leaderboards", headers=origin)
    assert "access-control-allow-origin" not in off.headers
    on = await small_client.get("/v1/leaderboards", headers=origin)
    assert on.headers["access-control-allow-origin"] == "https://game.example"
    preflight = await small_client.options(
        "/v1/leaderboards/hy/scores",
        headers=origin | {"Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "https://game.example"
    stranger = await small_client.get(
        "/v1/leaderboards", headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers


async def test_no_store_on_admin_routes_and_short_cache_on_reads(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    await _board(client)
    admin = await client.get("/v1/admin/anything", headers=ADMIN)
    assert admin.headers["cache-control"] == "no-store"
    created = await client.post("/v1/leaderboards", json={"id": "hy2"}, headers=ADMIN)
    assert created.headers["cache-control"] == "no-store"
    read = await client.get("/v1/leaderboards/hy/top")
    assert read.headers["cache-control"].startswith("public, max-age=")


async def test_one_json_log_line_per_request_without_secrets(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    access = logging.getLogger("rankstream.access")
    access.addHandler(handler)
    try:
        await client.get("/v1/leaderboards/nope", headers=ADMIN | {"X-Request-ID": "log-1"})
    finally:
        access.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    mine = [line for line in lines if line.get("request_id") == "log-1"]
    assert len(mine) == 1
    line = mine[0]
    assert line["method"] == "GET"
    assert line["route"] == "/v1/leaderboards/{board_id}"
    assert line["status"] == 404
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "info" and line["msg"] == "request"
    assert "rs_test-admin-key" not in out.getvalue()
    assert "authorization" not in out.getvalue().lower()
