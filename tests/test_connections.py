"""A task busy with Redis ends when cancelled (redis-py's writes under Python 3.11)."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from service.connections import redis_client
from service.settings import Settings


async def test_a_task_busy_with_redis_ends_when_cancelled(redis: Redis, settings: Settings) -> None:
    # With redis-py's own connection about 2 in 3 of these cancellations were lost on
    # Python 3.11: the task ran on, sending commands, as the consumer's upkeep loop did.
    client = redis_client(settings)

    async def busy() -> None:
        while True:
            await client.xadd("t:s", {"a": 1})
            await client.xtrim("t:s", maxlen=10, approximate=False)

    ended = 0
    try:
        for _ in range(200):
            task = asyncio.create_task(busy())
            await asyncio.sleep(random.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done:
                break
            assert task.cancelled()
            ended += 1
    finally:
        while not task.done():  # a lost cancellation: stop it all the same
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        await client.aclose()
    assert ended == 200
