"""A rate-limit hit and the window's stats in one Redis round trip.

`limits`' limiters answer a hit (`hit`: counted or not) and what is left of the window
(`get_window_stats`, for the `RateLimit-*` headers) in two calls, each its own round trip
through redis-py: on the hot reads they cost more client CPU than the read itself. The
commands behind them are the storage's own (its Lua scripts are already registered with
Redis); sent back to back in one pipeline they answer in one round trip, in order (so the
stats count the hit just made), with the same keys, arguments and answers as the library's
`RedispyBridge` (limits 5.8), which this mirrors for the moving window (`acquire_entry`,
`get_moving_window`), the sliding window counter (`acquire_sliding_window_entry`,
`get_sliding_window`) and the fixed window (`incr`, then `get` and `get_expiry`);
tests/test_ratelimit.py holds its counts to the library's own.

In the API the two go out on its lean read link (`service.wire.ReadLink`) rather than
through redis-py: one pipelined redis-py call costs ~300 µs of client CPU here, more than a
hot read itself, the link ~30 µs (`python -m loadtest clients`).

When Redis no longer knows the scripts (restarted, `SCRIPT FLUSH`) the library's own calls
are made instead: they load the scripts again.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Any, cast

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.util import WindowStats
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from service.wire import Arg, ReadLink

Command = tuple[Arg, ...]


class WindowHits(ABC):
    """`hit` then `get_window_stats` of a limiter on redis-py, pipelined: each strategy
    names its two commands and reads the window's stats from their replies."""

    def __init__(
        self, limiter: RateLimiter, bridge: RedispyBridge, link: ReadLink | None = None
    ) -> None:
        self.limiter = limiter
        self.bridge = bridge
        self.link = link

    @staticmethod
    def of(limiter: RateLimiter, link: ReadLink | None = None) -> WindowHits:
        """For a limiter of the library's three strategies on a redis-py storage. With
        `link` (to the storage's Redis), the commands are sent on it."""
        storage = limiter.storage
        bridge = getattr(storage, "bridge", None) if isinstance(storage, RedisStorage) else None
        if not isinstance(bridge, RedispyBridge):
            raise TypeError(f"not a redis-py storage: {storage!r}")
        if isinstance(limiter, MovingWindowRateLimiter):
            return MovingWindowHits(limiter, bridge, link)
        if isinstance(limiter, SlidingWindowCounterRateLimiter):
            return SlidingWindowHits(limiter, bridge, link)
        if isinstance(limiter, FixedWindowRateLimiter):
            return FixedWindowHits(limiter, bridge, link)
        raise TypeError(f"no pipelined hit for {type(limiter).__name__}")

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, WindowStats]:
        """Count one hit (if the window has room) and the window's stats after it."""
        now = time.time()
        hit, stats = self._commands(item, item.key_for(*identifiers), now)
        try:
            replies = await self._both(hit, stats)
        except NoScriptError:  # the library's own calls load the scripts again
            allowed = await self.limiter.hit(item, *identifiers)
            return allowed, await self.limiter.get_window_stats(item, *identifiers)
        return self._answer(item, replies, now)

    @abstractmethod
    def _commands(self, item: RateLimitItem, key: str, now: float) -> tuple[Command, Command]:
        """The hit's command and the stats' command for the limit's (unprefixed) key."""

    @abstractmethod
    def _answer(
        self, item: RateLimitItem, replies: tuple[Any, Any], now: float
    ) -> tuple[bool, WindowStats]:
        """Whether the hit counted, and the window's stats, from the two replies."""

    async def _both(self, hit: Command, stats: Command) -> tuple[Any, Any]:
        """The replies of the two commands, sent in one round trip (NoScriptError if Redis
        lost a script)."""
        if self.link is not None:
            acquired, window = await self.link.execute_many(hit, stats)
            return acquired, window
        client = cast(Redis, self.bridge.get_connection())  # the client it was given
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*hit)
        pipe.execute_command(*stats)
        acquired, window = await pipe.execute()
        return acquired, window


class MovingWindowHits(WindowHits):
    """The moving window: a list of hit times per key."""

    def _commands(self, item: RateLimitItem, key: str, now: float) -> tuple[Command, Command]:
        bridge = self.bridge
        key = bridge.prefixed_key(key)
        limit, expiry = item.amount, item.get_expiry()
        sha = bridge.lua_acquire_moving_window.sha
        acquire = ("EVALSHA", sha, 1, key, repr(now), limit, expiry, 1)
        stats = ("EVALSHA", bridge.lua_moving_window.sha, 1, key, repr(now - expiry), limit)
        return acquire, stats

    def _answer(
        self, item: RateLimitItem, replies: tuple[Any, Any], now: float
    ) -> tuple[bool, WindowStats]:
        acquired, window = replies
        start, count = (float(window[0]), int(window[1])) if window else (now, 0)
        return bool(acquired), WindowStats(start + item.get_expiry(), item.amount - count)


class SlidingWindowHits(WindowHits):
    """The sliding window counter: this window's count and the previous one's, weighted by
    how much of the previous window still overlaps the sliding one (O(1) in Redis)."""

    def _commands(self, item: RateLimitItem, key: str, now: float) -> tuple[Command, Command]:
        bridge = self.bridge
        # RedisStorage._current_window_key and _previous_window_key
        current = bridge.prefixed_key(f"{{{key}}}")
        previous = bridge.prefixed_key(f"{{{key}}}/-1")
        limit, expiry = item.amount, item.get_expiry()
        sha = bridge.lua_acquire_sliding_window.sha
        acquire = ("EVALSHA", sha, 2, previous, current, limit, expiry, 1)
        stats = ("EVALSHA", bridge.lua_sliding_window.sha, 2, previous, current, expiry)
        return acquire, stats

    def _answer(
        self, item: RateLimitItem, replies: tuple[Any, Any], now: float
    ) -> tuple[bool, WindowStats]:
        acquired, window = replies
        limit, expiry = item.amount, item.get_expiry()
        window = window or [0, 0, 0, 0]
        before, now_count = int(window[0] or 0), int(window[2] or 0)
        before_ttl = max(0.0, float(window[1] or 0)) / 1000  # seconds left of each window
        now_ttl = max(0.0, float(window[3] or 0)) / 1000
        # As SlidingWindowCounterRateLimiter.get_window_stats, but for the current window's
        # end: a counter lives twice the window, so it ends `ttl - expiry` from now. The
        # library's `ttl % expiry` is the same but for a counter just made (a TTL of exactly
        # twice the window), where it reads 0 instead of the window's length.
        weighted = before * before_ttl / expiry + now_count
        remaining = max(0, limit - math.floor(weighted))
        if not (before or now_count):
            return bool(acquired), WindowStats(now, remaining)
        before_reset = before_ttl % (expiry / before) if before else math.inf
        now_reset = (now_ttl - expiry if now_ttl > expiry else now_ttl) if now_count else math.inf
        return bool(acquired), WindowStats(now + min(before_reset, now_reset), remaining)


class FixedWindowHits(WindowHits):
    """The fixed window: one counter per key, made with the window's TTL by its first hit."""

    def _commands(self, item: RateLimitItem, key: str, now: float) -> tuple[Command, Command]:
        key = self.bridge.prefixed_key(key)
        incr = ("EVALSHA", self.bridge.lua_incr_expire.sha, 1, key, item.get_expiry(), 1)
        return incr, ("TTL", key)

    def _answer(
        self, item: RateLimitItem, replies: tuple[Any, Any], now: float
    ) -> tuple[bool, WindowStats]:
        # As FixedWindowRateLimiter: the hit counts when the count it made is within the
        # limit; the stats' GET would read that same count, in the same round trip.
        count, ttl = int(replies[0]), int(replies[1])
        return count <= item.amount, WindowStats(max(ttl, 0) + now, max(0, item.amount - count))
