"""SIGTERM to `rankstream up` under load: every submission answered 202 is kept."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from service.settings import Settings
from tests.conftest import settings_env
from tests.support import ADMIN, drained


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_under_load_loses_no_accepted_submission(
    settings: Settings, redis: Redis, pg: asyncpg.Connection, spawn: Any
) -> None:
    port = _free_port()
    env = settings_env(settings) | {"RANKSTREAM_PORT": str(port)}
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env)
    base = f"http://127.0.0.1:{port}"
    accepted: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=base, headers=ADMIN, timeout=10) as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    if (await http.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "not ready"
                await asyncio.sleep(0.1)
            assert (
                await http.post("/v1/leaderboards", json={"id": "t", "operator": "increment"})
            ).status_code == 201

            async def writer(n: int) -> None:
                for i in range(10_000):
                    items = [
                        {"board_id": "t", "player_id": f"w{n}-{i % 50}", "score": 1}
                        for _ in range(20)
                    ]
                    try:
                        answer = await http.post("/v1/scores/batch", json={"submissions": items})
                    except httpx.TransportError:
                        return  # the server has gone: stop writing
                    if answer.status_code == 202:
                        accepted.extend(answer.json()["event_ids"])
                    elif answer.status_code >= 500:
                        return

            writers = [asyncio.create_task(writer(n)) for n in range(4)]
            await asyncio.sleep(1.5)
            up.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*writers), 30)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert len(accepted) > 100
    spawn("consume")  # whatever the stopped consumer left in the stream
    await drained(redis, settings, timeout=60)
    stored = {r["event_id"] for r in await pg.fetch("SELECT event_id FROM event_ids")}
    assert set(accepted) <= stored
    assert await pg.fetchval("SELECT sum(score) FROM player_scores WHERE window_name='all'") == len(
        stored
    )
