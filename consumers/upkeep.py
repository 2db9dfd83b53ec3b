"""Stream and table upkeep: the consumer group, trimming, score_events partitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from redis.asyncio import Redis

from service import queries, stream
from service.settings import Settings

log = logging.getLogger("rankstream.consumer")
PARTITIONS_EVERY_S = 3600.0


async def ensure_partitions(pg: asyncpg.Pool) -> None:
    """Monthly score_events partitions for this month and the next two."""
    await pg.execute(queries.ENSURE_PARTITIONS)


async def trim(redis: Redis, settings: Settings) -> int:
    """Drop entries every consumer is done with: older than the oldest pending entry, or,
    with nothing pending, up to the last one delivered. Returns how many were removed."""
    groups = await redis.xinfo_groups(settings.stream_key)
    group = next((g for g in groups if _text(g["name"]) == settings.consumer_group), None)
    if group is None:
        return 0
    pending = await redis.xpending(settings.stream_key, settings.consumer_group)
    oldest = pending["min"] if pending["pending"] else group["last-delivered-id"]
    min_id = _text(oldest)
    if min_id == "0-0":
        return 0
    removed: int = await redis.xtrim(settings.stream_key, minid=min_id, approximate=False)
    return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def run(redis: Redis, pg: asyncpg.Pool, settings: Settings) -> None:
    """Trim every `trim_interval_ms`, make partitions hourly, until cancelled."""
    partitions_at = time.monotonic()
    while True:
        await asyncio.sleep(settings.trim_interval_ms / 1000)
        with contextlib.suppress(Exception):
            # Upkeep failing (a dependency down) must never stop the consumer; it retries.
            await trim(redis, settings)
            await stream.ensure_group(redis, settings.stream_key, settings.consumer_group)
            if time.monotonic() - partitions_at > PARTITIONS_EVERY_S:
                await ensure_partitions(pg)
                partitions_at = time.monotonic()
