"""`rankstream up` serves the whole path: granian API + consumer processes on real servers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx

from service.settings import Settings
from tests.conftest import settings_env
from tests.support import ADMIN_KEY


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_runs_api_and_consumer_end_to_end(settings: Settings) -> None:
    port = _free_port()
    env = settings_env(settings) | {"RANKSTREAM_PORT": str(port)}
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(base + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "API not ready within 15 s"
            time.sleep(0.1)
        with httpx.Client(base_url=base, headers=auth, timeout=10) as http:
            assert http.post("/v1/leaderboards", json={"id": "e2e"}).status_code == 201
            first = http.post(
                "/v1/leaderboards/e2e/scores?wait=true", json={"player_id": "a", "score": 10}
            )
            assert first.status_code == 200, first.text
            assert first.json()["rank"] == 1
            second = http.post(
                "/v1/leaderboards/e2e/scores?wait=true", json={"player_id": "b", "score": 20}
            )
            assert (second.json()["rank"], second.json()["previous_rank"]) == (1, None)
            top = http.get("/v1/leaderboards/e2e/top").json()
            assert [(e["player_id"], e["rank"]) for e in top["entries"]] == [("b", 1), ("a", 2)]
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0


def test_consume_workers_runs_that_many_readers(settings: Settings, spawn: object) -> None:
    import asyncio

    from redis.asyncio import Redis

    spawn("consume", "--workers", "2")  # type: ignore[operator]

    async def readers() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            for _ in range(100):
                try:
                    found = await redis.xinfo_consumers(
                        settings.stream_key, settings.consumer_group
                    )
                except Exception:
                    found = []
                names = [c["name"] for c in found if not c["name"].endswith(b"-claimer")]
                if len(names) >= 2:
                    return len(names)
                await asyncio.sleep(0.1)
            return 0
        finally:
            await redis.aclose()

    # xinfo lists a consumer once it has read; the group starts empty, so feed it one entry.
    async def feed() -> None:
        redis = Redis.from_url(settings.redis_url)
        await redis.xadd(settings.stream_key, {b"e": b"poke"})
        await redis.aclose()

    time.sleep(2)
    asyncio.run(feed())
    assert asyncio.run(readers()) == 2
