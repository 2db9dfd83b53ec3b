"""A moving-window hit and the window's stats in one Redis round trip.

`limits`' `MovingWindowRateLimiter` answers a hit (`hit`: counted or not) and what is left
of the window (`get_window_stats`, for the `RateLimit-*` headers) in two calls, each its own
round trip through redis-py: on the hot reads they cost more client CPU than the read
itself. The two Lua scripts behind them are the storage's own, already registered with
Redis; sent back to back in one pipeline they answer in one round trip, in order (so the
stats count the hit just made), with the same keys, arguments and answers as the library's
`RedispyBridge.acquire_entry` and `get_moving_window` (limits 5.8), which this mirrors;
tests/test_ratelimit.py holds its counts to the library's own.

In the API the two go out on its lean read link (`service.wire.ReadLink`) rather than
through redis-py: one pipelined redis-py call costs ~300 µs of client CPU here, more than a
hot read itself, the link ~30 µs (`python -m loadtest clients`).

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

from service.wire import ReadLink


class MovingWindowHits:
    """`hit` then `get_window_stats` of a moving-window limiter on redis-py, pipelined."""

    def __init__(
        self, limiter: MovingWindowRateLimiter, bridge: RedispyBridge, link: ReadLink | None = None
    ) -> None:
        self.limiter = limiter
        self.bridge = bridge
        self.link = link

    @classmethod
    def of(cls, limiter: object, link: ReadLink | None = None) -> MovingWindowHits | None:
        """For a moving-window limiter on a redis-py storage; None for any other. With
        `link` (to the storage's Redis), the scripts are sent on it."""
        if not isinstance(limiter, MovingWindowRateLimiter):
            return None
        storage = limiter.storage
        bridge = getattr(storage, "bridge", None) if isinstance(storage, RedisStorage) else None
        return cls(limiter, bridge, link) if isinstance(bridge, RedispyBridge) else None

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, WindowStats]:
        """Count one hit (if the window has room) and the window's stats after it."""
        bridge = self.bridge
        key = bridge.prefixed_key(item.key_for(*identifiers))
        limit, expiry = item.amount, item.get_expiry()
        now = time.time()
        acquire = (bridge.lua_acquire_moving_window.sha, 1, key, repr(now), limit, expiry, 1)
        stats = (bridge.lua_moving_window.sha, 1, key, repr(now - expiry), limit)
        try:
            if self.link is not None:
                acquired, window = await self.link.execute_many(
                    ("EVALSHA", *acquire), ("EVALSHA", *stats)
                )
            else:
                client = cast(Redis, bridge.get_connection())  # the client it was given
                pipe = client.pipeline(transaction=False)
                pipe.evalsha(*acquire)
                pipe.evalsha(*stats)
                acquired, window = await pipe.execute()
        except NoScriptError:
            allowed = await self.limiter.hit(item, *identifiers)
            return allowed, await self.limiter.get_window_stats(item, *identifiers)
        start, count = (float(window[0]), int(window[1])) if window else (now, 0)
        return bool(acquired), WindowStats(start + expiry, limit - count)
