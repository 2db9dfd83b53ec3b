"""`clients`: client CPU per Redis command, redis-py's pool against the API's read link.

Issue 4 asks to choose the Redis client with numbers. 64 concurrent callers each do
ZREVRANK on a 100,000-member set, first through redis-py's BlockingConnectionPool (the
installed version), then through `service.wire.ReadLink`; the figure is the harness
process's CPU per command, which is what an API worker pays per read.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis as redis_py
from redis.asyncio import BlockingConnectionPool, Redis

from loadtest import machine, results
from loadtest.stack import Harness
from loadtest.stats import figure
from service.wire import ReadLink

KEY = "bench:clients"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--commands", type=int, default=60_000, help="commands per client (60000)")
    p.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")


async def _measure(
    call: Callable[[str], Awaitable[Any]], commands: int, callers: int
) -> dict[str, float]:
    async def caller(k: int) -> None:
        for i in range(commands // callers):
            await call(f"m{(i * 7919 + k) % 100_000}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = commands // callers * callers
    return {"commands_per_s": round(done / wall), "client_cpu_us": round(1e6 * cpu / done, 1)}


async def _compare(url: str, commands: int, callers: int) -> dict[str, dict[str, float]]:
    pool = BlockingConnectionPool.from_url(url, max_connections=callers)
    client = Redis(connection_pool=pool)
    link = ReadLink(url)
    try:
        for start in range(0, 100_000, 10_000):
            await client.zadd(KEY, {f"m{i}": i for i in range(start, start + 10_000)})
        return {
            f"redis-py {redis_py.__version__}": await _measure(
                lambda m: client.zrevrank(KEY, m), commands, callers
            ),
            "service.wire.ReadLink": await _measure(
                lambda m: link.execute("ZREVRANK", KEY, m), commands, callers
            ),
        }
    finally:
        await link.aclose()
        await client.aclose()


def run(args: argparse.Namespace) -> int:
    out: dict[str, Any] = {
        "scenario": "clients",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine.describe(),
        "load": {"at_start": machine.loadavg()},
        "parameters": {"commands": args.commands, "callers": args.callers},
        "load_generator": "none: the clients run in the harness process",
        "figures": [],
        "notes": [],
    }
    with Harness() as harness:
        settings = harness.start_servers()
        measured = asyncio.run(_compare(settings.redis_url, args.commands, args.callers))
    out["runs"] = [{"client": name, **m} for name, m in measured.items()]
    for name, m in measured.items():
        out["figures"].append(
            figure(f"{name}: client CPU per command", m["client_cpu_us"], "µs", note="ZREVRANK")
        )
        out["figures"].append(
            figure(f"{name}: commands/s, {args.callers} callers", m["commands_per_s"], "cmd/s")
        )
        print(f"{name:28} {m['commands_per_s']:>8,} commands/s  {m['client_cpu_us']} µs CPU")
    out["load"]["at_end"] = machine.loadavg()
    print(f"results: {results.write('clients', out)}")
    return 0
