"""The submission stream seen from outside: length, consumer-group lag and pending entries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from redis.asyncio import Redis


def text(value: Any) -> str:
    """A Redis reply field as str (replies are bytes unless decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def group_state(redis: Redis, stream_key: str, group: str) -> dict[str, Any] | None:
    """The consumer group's XINFO GROUPS entry, or None when the group does not exist."""
    for g in await redis.xinfo_groups(stream_key):
        if text(g["name"]) == group:
            return dict(g)
    return None


class StreamState(msgspec.Struct, frozen=True):
    """One reading of the stream: entries held, not yet delivered (lag), delivered but not
    acknowledged (pending). lag is None when Redis cannot tell (entries deleted under it)."""

    length: int
    lag: int | None
    pending: int

    @property
    def idle(self) -> bool:
        """Everything accepted has been processed and acknowledged."""
        return self.lag == 0 and self.pending == 0


async def stream_state(redis: Redis, stream_key: str, group: str) -> StreamState:
    """XLEN and the group's lag and pending count (a missing stream or group: all zero)."""
    length = int(await redis.xlen(stream_key))
    if length == 0 and not await redis.exists(stream_key):
        return StreamState(0, 0, 0)
    g = await group_state(redis, stream_key, group)
    if g is None:
        return StreamState(length, length, 0)
    lag = g.get("lag")
    if lag is None:
        # Trimming can leave Redis unable to count; caught up is still knowable.
        info = await redis.xinfo_stream(stream_key)
        if text(g["last-delivered-id"]) == text(info["last-generated-id"]):
            lag = 0
    return StreamState(length, None if lag is None else int(lag), int(g["pending"]))


async def wait_idle(redis: Redis, stream_key: str, group: str, timeout_s: float) -> float | None:
    """Seconds until the consumers caught up (lag 0, nothing pending); None on timeout."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if (await stream_state(redis, stream_key, group)).idle:
            return round(time.perf_counter() - t0, 2)
        await asyncio.sleep(0.1)
    return None


async def wait_consumers(
    redis: Redis, stream_key: str, group: str, timeout_s: float, known: set[str] | None = None
) -> bool:
    """Wait until a consumer not in `known` (names of earlier, maybe stopped, processes)
    has joined the group, i.e. read from the stream once."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if await consumer_names(redis, stream_key, group) - (known or set()):
            return True
        await asyncio.sleep(0.2)
    return False


async def consumer_names(redis: Redis, stream_key: str, group: str) -> set[str]:
    """Names of the group's consumers (an empty set before the group exists)."""
    if not await redis.exists(stream_key) or await group_state(redis, stream_key, group) is None:
        return set()
    return {text(c["name"]) for c in await redis.xinfo_consumers(stream_key, group)}
