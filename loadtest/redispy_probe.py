"""redis-py's client CPU per command, alone and as a pipelined pair, in the redis-py version
this interpreter imports.

Only redis-py and the standard library are imported, so that `clients` can run this module
under another redis-py version (`python -m loadtest.redispy_probe URL COMMANDS CALLERS`, with
that version first on PYTHONPATH) and compare it with the installed one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis as redis_py
from redis.asyncio import BlockingConnectionPool, Redis

KEY = "bench:clients"
MEMBERS = 100_000


def member(i: int, k: int) -> str:
    """The member caller k asks for on its i-th call: spread over the whole set."""
    return f"m{(i * 7919 + k) % MEMBERS}"


async def measure(
    call: Callable[[str], Awaitable[Any]], commands: int, callers: int
) -> dict[str, float]:
    """Calls per second and this process's CPU per call, with `callers` at once."""

    async def caller(k: int) -> None:
        for i in range(commands // callers):
            await call(member(i, k))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = commands // callers * callers
    return {"calls_per_s": round(done / wall), "client_cpu_us": round(1e6 * cpu / done, 1)}


async def fill(client: Redis) -> None:
    """The set the calls read (idempotent)."""
    for start in range(0, MEMBERS, 10_000):
        await client.zadd(KEY, {f"m{i}": i for i in range(start, start + 10_000)})


async def redis_py_figures(url: str, commands: int, callers: int) -> dict[str, dict[str, float]]:
    """ZREVRANK alone, and ZREVRANK + ZSCORE in one pipeline, through a blocking pool."""
    pool = BlockingConnectionPool.from_url(url, max_connections=callers)
    client = Redis(connection_pool=pool)

    async def pair(m: str) -> Any:
        async with client.pipeline(transaction=False) as pipe:
            pipe.zrevrank(KEY, m)
            pipe.zscore(KEY, m)
            return await pipe.execute()

    try:
        await fill(client)
        return {
            "ZREVRANK": await measure(lambda m: client.zrevrank(KEY, m), commands, callers),
            "pipelined ZREVRANK + ZSCORE": await measure(pair, commands, callers),
        }
    finally:
        await client.aclose()


def main() -> None:
    url, commands, callers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    figures = asyncio.run(redis_py_figures(url, commands, callers))
    print(json.dumps({"version": redis_py.__version__, "figures": figures}))


if __name__ == "__main__":
    main()
