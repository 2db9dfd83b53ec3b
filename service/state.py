"""What a running API process holds: settings, clients and caches, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from service.settings import Settings


@dataclass
class Services:
    """The process's shared resources, handed to routes as a dependency."""

    settings: Settings
    redis: Redis
    pg: asyncpg.Pool

    async def close(self) -> None:
        """Release every connection."""
        await self.pg.close()
        await self.redis.aclose()
