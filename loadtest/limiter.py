"""The rate limiter's cost per check, by window strategy and by how full a client's window is.

Each check is one `RateLimits.check` of the API (the hit and the window's stats, in one round
trip on a `ReadLink`), against the default rank-lookup limit (300/minute). `--identities`
clients are first brought to a fill level (hits already in their window), then each makes
`--checks-each` measured checks. Redis CPU per check comes from INFO's main-thread CPU before
and after; client CPU from this process's. A real client polling a rank 4 times a second
keeps ~240 hits in its window; the many clients behind one NAT address, up to the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from loadtest import results
from loadtest.stack import Harness
from loadtest.stats import figure
from service.connections import redis_client
from service.ratelimit import RateLimits
from service.settings import Settings
from service.wire import ReadLink

STRATEGIES = ("sliding-window-counter", "moving-window", "fixed-window")
LIMIT = "300/minute"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fills", default="1,150,270", help="hits already in each window (1,150,270)")
    p.add_argument("--identities", type=int, default=100, help="clients per fill level (100)")
    p.add_argument("--checks-each", type=int, default=20, help="measured checks a client (20)")


async def _redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


async def measure(
    settings: Settings, strategy: str, fill: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Redis and client CPU per check for clients with `fill` hits in their window."""
    settings = msgspec.structs.replace(
        settings,
        rate_limit_strategy=strategy,
        rate_limit_rank_lookups=LIMIT,
        rate_limit_per_key="1000000/minute",
    )
    redis = redis_client(settings)
    link = ReadLink(settings.redis_url)
    limits = RateLimits(settings, redis, link)
    try:
        await redis.flushdb()
        who = [f"10.{fill % 256}.{i // 256}.{i % 256}" for i in range(args.identities)]
        for _ in range(fill):
            await asyncio.gather(*(limits.check([("rank_lookups", ip)]) for ip in who))
        redis_before, client_before = await _redis_cpu_s(redis), time.process_time()
        wall = time.perf_counter()
        refused = 0
        for _ in range(args.checks_each):
            for decision in await asyncio.gather(
                *(limits.check([("rank_lookups", ip)]) for ip in who)
            ):
                refused += decision is not None and not decision.allowed
        wall = time.perf_counter() - wall
        client_s = time.process_time() - client_before
        redis_s = await _redis_cpu_s(redis) - redis_before
    finally:
        await limits.close()
        await link.aclose()
        await redis.aclose()
    checks = args.identities * args.checks_each
    return {
        "strategy": strategy,
        "fill": fill,
        "checks": checks,
        "refused": refused,
        "redis_cpu_us": round(1e6 * redis_s / checks, 1),
        "client_cpu_us": round(1e6 * client_s / checks, 1),
        "checks_per_s": round(checks / wall),
    }


def run(args: argparse.Namespace) -> int:
    record = results.Record(
        "limiter", args, "none: RateLimits.check in the harness process, on a ReadLink", runs=[]
    )
    out = record.out
    fills = [int(f) for f in args.fills.split(",") if f.strip()]
    failed = False
    try:
        with Harness() as harness:
            settings = harness.start_servers()
            for fill in fills:
                for strategy in STRATEGIES:
                    found = asyncio.run(measure(settings, strategy, fill, args))
                    out["runs"].append(found)
                    print(
                        f"  {strategy:24} fill {fill:>4}: Redis {found['redis_cpu_us']:>6} µs, "
                        f"client {found['client_cpu_us']:>6} µs a check, "
                        f"{found['checks_per_s']:,} checks/s, refused {found['refused']}",
                        flush=True,
                    )
                    out["figures"].append(
                        figure(
                            f"{strategy}, {fill} hits in the window: Redis CPU per check",
                            found["redis_cpu_us"],
                            "µs",
                            note=f"client CPU {found['client_cpu_us']} µs; {LIMIT}",
                        )
                    )
    except Exception as exc:
        record.failed(exc)
        failed = True
    record.save()
    return 1 if failed else 0
