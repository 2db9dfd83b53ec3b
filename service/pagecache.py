"""Serialized read answers kept in the process, so a hot page costs no Redis round trip.

An entry belongs to a board and is dropped as soon as the board changes: Redis keyspace
notifications on the board's revision counter (INCR by every write script, DEL when a
board goes) reach every API process over one subscription. Changes that send no
notification (a FLUSHALL, a restart of Redis) are covered by a short lifetime: no entry
outlives `ttl_s`, the same staleness `Cache-Control: max-age` already grants clients.
While the subscription is down, nothing is served from the cache.

Answers read from Postgres (Redis down, a set missing) are kept apart, for `ttl_s` only,
whether or not notifications flow: at a million players such a read takes ~0.1 s of
Postgres, so a Redis outage under the usual polling would queue every reader behind the
database; with this, each page costs one read a second per process. Nobody is told when
these go stale, so the lifetime alone bounds it, as `Cache-Control: max-age` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from redis.asyncio import Redis

from service import background

log = logging.getLogger("rankstream.api")
V = TypeVar("V")

_CHANNEL_PREFIX = "__keyspace@{db}__:"
_REVISION_PATTERN = "lb:{*}:rev"
_NEEDED_FLAGS = "K$g"  # keyspace events of string commands (INCR) and generic ones (DEL)


@dataclass(frozen=True)
class Page:
    """One serialized answer with the headers that describe it."""

    body: bytes
    etag: str | None
    source: str
    # The read headers as the hot path sends them, encoded by the first request that needs
    # them (service.hotreads): a cached page is sent many times.
    wire_headers: list[tuple[bytes, bytes]] = field(default_factory=list, compare=False)


@dataclass
class _Slot:
    page: Page
    board: str
    generation: int
    stored_at: float


class PageCache:
    """Pages by request key; bounded in size, invalidated per board."""

    def __init__(self, redis: Redis, ttl_s: float, max_entries: int = 4096) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._fallback: OrderedDict[str, tuple[Page, float]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._connected = False
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """True when entries may be served (configured on, notifications flowing)."""
        return self._ttl_s > 0 and self._connected

    def generation(self, board: str) -> int:
        """Take before reading Redis; store with it, so a change during the read wins."""
        return self._generations.get(board, 0)

    def get(self, key: str) -> Page | None:
        """A still-valid page, or None."""
        if not self.enabled:
            return None
        slot = self._slots.get(key)
        if slot is None:
            return None
        fresh = time.monotonic() - slot.stored_at < self._ttl_s
        if not fresh or slot.generation != self._generations.get(slot.board, 0):
            del self._slots[key]
            return None
        return slot.page

    def put(self, key: str, board: str, generation: int, page: Page) -> None:
        """Remember a page read while the board was at `generation`."""
        if not self.enabled:
            return
        slot = _Slot(page, board, generation, time.monotonic())
        _remember(self._slots, key, slot, self._max_entries)

    def get_fallback(self, key: str) -> Page | None:
        """A page read from Postgres less than `ttl_s` ago, or None."""
        found = self._fallback.get(key)
        if found is None:
            return None
        if time.monotonic() - found[1] >= self._ttl_s:
            del self._fallback[key]
            return None
        return found[0]

    def put_fallback(self, key: str, page: Page) -> None:
        """Remember a page read from Postgres, for `ttl_s` (kept only when the cache is
        configured on: `ttl_s` > 0)."""
        if self._ttl_s <= 0:
            return
        _remember(self._fallback, key, (page, time.monotonic()), self._max_entries)

    def invalidate(self, board: str) -> None:
        """The board changed: its pages are stale."""
        self._generations[board] = self._generations.get(board, 0) + 1

    def start(self) -> None:
        """Follow revision changes in the background."""
        if self._ttl_s > 0:
            self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        """Stop following."""
        await background.cancel_and_wait(self._task)

    async def _follow(self) -> None:
        while True:
            try:
                await self._subscribe_and_listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("page cache: revision feed lost (%r); cache off until it returns", exc)
            self._drop_all()
            await asyncio.sleep(1.0)

    async def _subscribe_and_listen(self) -> None:
        await _enable_notifications(self._redis)
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        prefix = _CHANNEL_PREFIX.format(db=db)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(prefix + _REVISION_PATTERN)
            self._drop_all()  # whatever changed while not subscribed
            self._connected = True
            async for message in pubsub.listen():
                channel = message["channel"]
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                board = _board_of(name[len(prefix) :])
                if board is not None:
                    self.invalidate(board)
        finally:
            self._connected = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _drop_all(self) -> None:
        self._slots.clear()
        for board in list(self._generations):
            self.invalidate(board)


def _board_of(key: str) -> str | None:
    # lb:{board}:rev
    if key.startswith("lb:{") and key.endswith("}:rev"):
        return key[4:-5]
    return None


async def _enable_notifications(redis: Redis) -> None:
    """Turn on the keyspace events the cache needs, keeping any already configured."""
    current = (await redis.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
    current = current.decode() if isinstance(current, bytes) else str(current)
    missing = [flag for flag in _NEEDED_FLAGS if flag not in current]
    if missing:
        await redis.config_set("notify-keyspace-events", current + "".join(missing))


def _remember(store: OrderedDict[str, V], key: str, value: V, max_entries: int) -> None:
    """Store as the newest entry; the oldest go beyond `max_entries`."""
    store[key] = value
    store.move_to_end(key)
    while len(store) > max_entries:
        store.popitem(last=False)
