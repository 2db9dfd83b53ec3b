"""A moving-window hit and the window's stats in one Redis round trip.

`limits`' `MovingWindowRateLimiter` answers a hit (`hit`: counted or not) and what is left
of the window (`get_window_stats`, for the `RateLimit-*` headers) in two calls, each its own
round trip through redis-py: on the hot reads they cost more client CPU than the read
itself. The two Lua scripts behind them are the storage's own, already registered with
Redis; sent back to back in one pipeline they answer in one round trip, in order (so the
stats count the hit just made), with the same keys, arguments and answers as the library's
`RedispyBridge.acquire_entry` and `get_moving_window` (limits 5.8), which this mirrors;
tests/test_ratelimit.py holds its counts to the library's own.

When Redis no longer knows the scripts (restarted, `SCRIPT FLUSH`) the library's own calls
are made instead: they load the scripts again.
"""

from __future__ import annotations

import time
from typing import cast

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from limits.util import WindowStats
from redis.asyncio import Redis
from redis.exceptions import NoScriptError


class MovingWindowHits:
    """`hit` then `get_window_stats` of a moving-window limiter on redis-py, pipelined."""

    def __init__(self, limiter: MovingWindowRateLimiter, bridge: RedispyBridge) -> None:
        self.limiter = limiter
        self.bridge = bridge

    @classmethod
    def of(cls, limiter: object) -> MovingWindowHits | None:
        """For a moving-window limiter on a redis-py storage; None for any other."""
        if not isinstance(limiter, MovingWindowRateLimiter):
            return None
        storage = limiter.storage
        bridge = getattr(storage, "bridge", None) if isinstance(storage, RedisStorage) else None
        return cls(limiter, bridge) if isinstance(bridge, RedispyBridge) else None

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, WindowStats]:
        """Count one hit (if the window has room) and the window's stats after it."""
        bridge = self.bridge
        key = bridge.prefixed_key(item.key_for(*identifiers))
        limit, expiry = item.amount, item.get_expiry()
        now = time.time()
        client = cast(Redis, bridge.get_connection())  # the redis-py client it was given
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(bridge.lua_acquire_moving_window.sha, 1, key, now, limit, expiry, 1)
        pipe.evalsha(bridge.lua_moving_window.sha, 1, key, now - expiry, limit)
        try:
            acquired, window = await pipe.execute()
        except NoScriptError:
            allowed = await self.limiter.hit(item, *identifiers)
            return allowed, await self.limiter.get_window_stats(item, *identifiers)
        start, count = (float(window[0]), int(window[1])) if window else (now, 0)
        return bool(acquired), WindowStats(start + expiry, limit - count)
