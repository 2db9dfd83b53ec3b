"""Rate limits: may this caller do this now?

Counters live in Redis (the `limits` library's async Redis storage, on redis-py), so every
API worker process shares them. Route classes and their defaults:

- `submissions`: per board and player_id (60/minute),
- `rank_lookups`: player rank, around-me and friends ranks, per client IP (300/minute),
- `board_queries`: top pages and board configuration, per client IP (600/minute),
- `per_key`: every request made with an API key, per key (6000/minute),
- `admin`: every route that needs the admin role, per admin key (120/minute).

A batch of submissions counts each item against its board and player, all or nothing
(`RateLimits.check_all`).

When Redis cannot be reached the limits fail open: reads keep being served from Postgres
and a limiter outage must not turn into a full outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio import Redis

from service import metrics
from service.settings import Settings
from service.windowhit import WindowHits
from service.wire import ReadLink

log = logging.getLogger("rankstream.ratelimit")

STRATEGIES: dict[str, Callable[[Storage], RateLimiter]] = {
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}
RouteClass = Literal["submissions", "rank_lookups", "board_queries", "per_key", "admin"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimitConfigError(ValueError):
    """A rate-limit setting cannot be parsed."""


@dataclass(frozen=True)
class Decision:
    """The outcome of one check: the tightest limit involved and what is left of it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window frees up
    what: str = ""  # which limit refused, e.g. "submissions"

    @property
    def headers(self) -> dict[str, str]:
        """`RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers), plus `Retry-After`
        on a refusal."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, self.reset_s))
        return out


@dataclass(frozen=True)
class Refusal:
    """Which identity of an all-or-nothing check is over which limit."""

    identity: str
    decision: Decision


# Identities tested (then counted) at once by check_all: one Redis round trip each, so a
# batch of 500 players takes 2 x 16 waits instead of 1000, without taking the whole pool.
CHECK_CONCURRENCY = 32


def _items(setting: str, value: str) -> list[RateLimitItem]:
    try:
        items = parse_many(value)
    except ValueError as exc:
        raise RateLimitConfigError(f"RANKSTREAM_{setting.upper()}={value!r}: {exc}") from None
    if not items:
        raise RateLimitConfigError(f"RANKSTREAM_{setting.upper()}={value!r}: no limit given")
    return list(items)


def storage_uri(redis_url: str) -> str:
    """`redis://...` as the `limits` async storage URI."""
    return "async+" + redis_url


class RateLimits:
    """The limiter of one process: parsed limits, Redis storage and the window strategy."""

    def __init__(
        self, settings: Settings, redis: Redis | None = None, link: ReadLink | None = None
    ) -> None:
        self.enabled = settings.rate_limits_enabled
        self.proxies = parse_networks(settings.trusted_proxies)
        self.ip_header = settings.client_ip_header
        self.items: dict[RouteClass, list[RateLimitItem]] = {
            "submissions": _items("rate_limit_submissions", settings.rate_limit_submissions),
            "rank_lookups": _items("rate_limit_rank_lookups", settings.rate_limit_rank_lookups),
            "board_queries": _items("rate_limit_board_queries", settings.rate_limit_board_queries),
            "per_key": _items("rate_limit_per_key", settings.rate_limit_per_key),
            "admin": _items("rate_limit_admin", settings.rate_limit_admin),
        }
        # Shares the process's (blocking) connection pool when given one.
        options: dict[str, Any] = (
            {"connection_pool": redis.connection_pool}
            if redis is not None
            else {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        )
        self._owns_client = redis is None
        self.storage = RedisStorage(
            storage_uri(settings.redis_url),
            implementation="redispy",
            key_prefix="rankstream:limits",
            wrap_exceptions=True,
            **options,
        )
        self.limiter = STRATEGIES[settings.rate_limit_strategy](self.storage)
        # A check's hit and stats in one round trip instead of the library's two.
        self.pipelined = WindowHits.of(self.limiter, link)

    async def check(self, checks: Iterable[tuple[RouteClass, str]]) -> Decision | None:
        """Count one hit against every (route class, identity); the tightest outcome.

        None when limits are off or the storage is unreachable (fail open)."""
        if not self.enabled:
            return None
        tightest: Decision | None = None
        try:
            for what, identity in checks:
                for item in self.items[what]:
                    allowed, stats = await self.pipelined.hit(item, what, identity)
                    reset = max(0, math.ceil(stats.reset_time - time.time()))
                    decision = Decision(allowed, item.amount, stats.remaining, reset, what)
                    if not allowed:
                        return decision
                    if tightest is None or decision.remaining < tightest.remaining:
                        tightest = decision
        except Exception as exc:  # the storage is down: let the request through
            metrics.dependency_error("redis", "ratelimit")
            log.warning("rate limit storage unavailable, not limiting: %r", exc)
            return None
        return tightest

    async def check_all(self, what: RouteClass, costs: Mapping[str, int]) -> Refusal | None:
        """Count `cost` hits against each identity of `costs`, only if all of them fit.

        The first identity found over a limit, or None when every one fits (or limits are
        off, or the storage is unreachable: fail open, as `check`).

        What is counted: the `limits` library can test a key without counting, but cannot
        test-and-count several keys in one step. So every identity is tested first, and
        counted only when all fit: a request refused by the test counts nothing. Between
        the test and the count a concurrent request may take the last room of an
        identity; its count then fails and the request is refused too, while the counts
        that step had already made stay (with the fixed-window strategy the failed one
        too, as any refused hit counts there).
        """
        if not self.enabled or not costs:
            return None
        work = [(item, ident, cost) for ident, cost in costs.items() for item in self.items[what]]
        try:
            for step in (self.limiter.test, self.limiter.hit):
                for start in range(0, len(work), CHECK_CONCURRENCY):
                    chunk = work[start : start + CHECK_CONCURRENCY]
                    fits = await asyncio.gather(
                        *(step(item, what, ident, cost=cost) for item, ident, cost in chunk)
                    )
                    for (item, ident, _cost), fit in zip(chunk, fits, strict=True):
                        if not fit:
                            stats = await self.limiter.get_window_stats(item, what, ident)
                            reset = max(0, math.ceil(stats.reset_time - time.time()))
                            refused = Decision(False, item.amount, stats.remaining, reset, what)
                            return Refusal(ident, refused)
        except Exception as exc:  # the storage is down: let the request through
            metrics.dependency_error("redis", "ratelimit")
            log.warning("rate limit storage unavailable, not limiting: %r", exc)
        return None

    async def close(self) -> None:
        """Drop the storage's connections (unless they belong to a shared pool)."""
        if not self._owns_client:
            return
        bridge: Any = getattr(self.storage, "bridge", None)
        client: Any = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()


def key_identity(api_key: str) -> str:
    """A key's identity for counting: never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def parse_networks(value: str) -> list[IpNetwork]:
    """`RANKSTREAM_TRUSTED_PROXIES`: comma-separated addresses or CIDRs."""
    out: list[IpNetwork] = []
    for part in value.split(","):
        part = part.strip()
        if part:
            out.append(ipaddress.ip_network(part, strict=False))
    return out


def _trusted(address: str, proxies: list[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def peer_is_trusted(peer: str | None, proxies: list[IpNetwork]) -> bool:
    """True when the socket peer is one of the trusted reverse proxies."""
    return bool(peer) and bool(proxies) and _trusted(str(peer), proxies)


def client_ip(
    peer: str | None, headers: Mapping[str, str], proxies: list[IpNetwork], header: str
) -> str:
    """The client's address: the socket peer, or, when the peer is a trusted proxy, the
    rightmost address of the proxy header that is not itself a trusted proxy."""
    address = peer or "unknown"
    if not peer_is_trusted(peer, proxies):
        return address
    forwarded = headers.get(header.lower())
    if not forwarded:
        return address
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # garbage in the header: count the proxy itself
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else address
