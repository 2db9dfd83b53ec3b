"""The per-process board cache: one reload for many stale readers, never a stale miss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import asyncpg
import pytest

from service import boards
from service.connections import pg_pool
from service.models import Board, BoardCreate
from service.settings import Settings


class _CountedLoads:
    """`boards.load_all` as it is, counting calls; an optional pause after the query."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.calls = 0
        self.pause_s = pause_s
        self._real = boards.load_all

    async def __call__(self, pg: asyncpg.Pool | asyncpg.Connection) -> Mapping[str, Board]:
        self.calls += 1
        found = await self._real(pg)
        await asyncio.sleep(self.pause_s)
        return found


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    made = await pg_pool(settings)
    yield made
    await made.close()


async def test_readers_that_find_the_cache_stale_together_share_one_reload(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await boards.create(pool, BoardCreate(id="cached"))
    cache = boards.BoardCache(pool, ttl_s=0.05)
    await cache.reload()
    loads = _CountedLoads(pause_s=0.05)
    monkeypatch.setattr(boards, "load_all", loads)
    await asyncio.sleep(0.1)  # past the TTL
    found = await asyncio.gather(*(cache.get("cached") for _ in range(30)))
    assert {b.id for b in found} == {"cached"}
    # The first reader's load began before the others asked, so it cannot answer for
    # them (it may predate a change they were told of); the second reader's load
    # began after all of them asked, and serves the other 28. Each in turn: 30.
    assert loads.calls == 2


async def test_a_board_created_during_a_reload_is_found_by_a_later_reader(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await boards.create(pool, BoardCreate(id="first"))
    cache = boards.BoardCache(pool, ttl_s=0.05)
    await cache.reload()
    # A reload whose query ran before the new board was committed, still in flight:
    # a reader that asks after the commit must not take its answer for its own.
    loads = _CountedLoads(pause_s=0.3)
    monkeypatch.setattr(boards, "load_all", loads)
    await asyncio.sleep(0.1)
    in_flight = asyncio.create_task(cache.get("first"))
    await asyncio.sleep(0.1)  # its query has answered; it is in its pause
    await boards.create(pool, BoardCreate(id="second"))
    later = await cache.get("second")
    assert later.id == "second"
    assert (await in_flight).id == "first"
    assert loads.calls == 2
