"""What a running API process holds: settings, clients and caches, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from service.auth import KeyCache
from service.boards import BoardCache
from service.breaker import Breakers
from service.pagecache import PageCache
from service.poolstats import PoolSampler
from service.ratelimit import RateLimits
from service.settings import Settings
from service.stream import Backlog
from service.wire import ReadLink


@dataclass
class Services:
    """The process's shared resources, handed to routes as a dependency."""

    settings: Settings
    redis: Redis
    reads: ReadLink  # the read path's lean link to the same Redis (service.wire)
    pg: asyncpg.Pool
    boards: BoardCache
    keys: KeyCache
    backlog: Backlog
    limits: RateLimits
    pages: PageCache
    breakers: Breakers
    pools: PoolSampler

    @classmethod
    def build(cls, settings: Settings, redis: Redis, pg: asyncpg.Pool) -> Services:
        """Wire caches to the clients."""
        reads = ReadLink(settings.redis_url)
        return cls(
            settings=settings,
            redis=redis,
            reads=reads,
            pg=pg,
            boards=BoardCache(pg, settings.board_cache_ttl_s),
            keys=KeyCache(pg, settings.bootstrap_admin_key, settings.key_cache_ttl_s),
            backlog=Backlog(redis, settings.stream_key, settings.max_stream_lag),
            limits=RateLimits(settings, redis, reads),
            pages=PageCache(redis, settings.page_cache_ttl_s),
            breakers=Breakers(),
            pools=PoolSampler(redis, pg),
        )

    async def close(self) -> None:
        """Release every connection."""
        await self.pools.close()
        await self.limits.close()
        await self.pages.close()
        await self.pg.close()
        await self.reads.aclose()
        await self.redis.aclose()
