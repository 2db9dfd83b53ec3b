"""Read answers as pages: the set a read is about, where it was answered from, its ETag.

Shared by the Litestar routes (`service.routes.rankings`) and the hot path
(`service.hotreads`), so both give byte-identical answers; nothing here knows a web
framework.

Answers come from the Redis sorted set when it exists. A missing set of the current period
on a board Redis knows (its revision counter exists) simply has no players: the answer is
empty. Any other missing set (a past period that expired, Redis restarted empty) and a
Redis that cannot be reached are answered from Postgres. GET answers carry a weak ETag
made of the board's revision counter and the request; answers read from Redis are kept in
the page cache until the board changes, those read from Postgres for the cache's lifetime.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import metrics, periods, ranking
from service.models import Board, Window
from service.pagecache import Page
from service.state import Services

T = TypeVar("T")
SOURCE_HEADER = "X-Rankstream-Source"
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


class BadParameter(ValueError):
    """A query parameter that names no window or period of the board."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Target:
    """The board, window and period a read is about."""

    board: Board
    window: Window
    period: str
    is_current: bool


def resolve(board: Board, window: str | None, period: str, now: datetime) -> Target:
    """The window (default: the board's first) and period id a read names."""
    if window is None:
        chosen = board.windows[0]
    else:
        found = next((w for w in board.windows if w == window), None)
        if found is None:
            raise BadParameter("window", f"must be one of {', '.join(board.windows)} on this board")
        chosen = found
    try:
        resolved = periods.resolve(chosen, period, now)
    except ValueError as exc:
        raise BadParameter("period", str(exc)) from None
    return Target(board, chosen, resolved, resolved == periods.period_id(chosen, now))


async def read(
    services: Services,
    target: Target,
    from_redis: Callable[[ranking.ReadMeta], Awaitable[T]],
    from_pg: Callable[[], Awaitable[T]],
    empty: Callable[[], T],
) -> tuple[T, str, int | None]:
    """The answer, where it came from, and the board's revision (None: unknown)."""
    redis = services.breakers.redis
    if not redis.allow():  # Redis keeps failing: straight to Postgres, no connect timeout
        return await _from_postgres(services, from_pg), "postgres", None
    meta = ranking.ReadMeta()
    try:
        answer = await from_redis(meta)
    except ranking.SetMissing as missing:
        redis.success()
        if target.is_current and missing.revision is not None:
            return empty(), "redis", missing.revision
        return await _from_postgres(services, from_pg), "postgres", missing.revision
    except REDIS_DOWN:
        redis.failure()
        metrics.dependency_error("redis", "read")
        return await _from_postgres(services, from_pg), "postgres", None
    redis.success()
    return answer, "redis", meta.revision


async def _from_postgres(services: Services, from_pg: Callable[[], Awaitable[T]]) -> T:
    services.breakers.postgres.check()
    answer = await from_pg()
    services.breakers.postgres.success()
    return answer


def page(get: bool, answer: Any, source: str, rev: int | None) -> Page:
    """The serialized answer and its ETag (GETs read from a known revision only)."""
    body = msgspec.json.encode(answer)
    etag = None
    if rev is not None and get:
        # The counter alone can repeat once Redis lost its data and counts again; with the
        # answer's digest beside it an old tag can only ever match the very same answer.
        digest = hashlib.blake2b(body + source.encode(), digest_size=8).hexdigest()
        etag = f'W/"{rev}-{digest}"'
    return Page(body=body, etag=etag, source=source)


def cache_key(path: str, query: str, target: Target) -> str:
    """The page cache's key of a GET."""
    # The resolved period is part of the key: `current` names another set after a reset.
    return f"{path}?{query}|{target.window}|{target.period}"


async def cached(
    services: Services,
    path: str,
    query: str,
    target: Target,
    from_redis: Callable[[ranking.ReadMeta], Awaitable[Any]],
    from_pg: Callable[[], Awaitable[Any]],
    empty: Callable[[], Any],
) -> tuple[Page | None, str]:
    """A GET's page from the cache, or read (and cached when read from Redis); None and
    the source when the answer is "no such entry" (an unranked player)."""
    key = cache_key(path, query, target)
    pages = services.pages
    found = pages.get(key) or pages.get_fallback(key)
    if found is not None:
        return found, found.source
    generation = pages.generation(target.board.id)
    answer, source, revision = await read(services, target, from_redis, from_pg, empty)
    if answer is None:
        return None, source
    fresh = page(True, answer, source, revision)
    if source == "redis":
        pages.put(key, target.board.id, generation, fresh)
    else:
        pages.put_fallback(key, fresh)
    return fresh, source


async def cached_from_redis(
    services: Services,
    path: str,
    query: str,
    target: Target,
    from_redis: Callable[[ranking.ReadMeta], Awaitable[Any]],
) -> Page | None:
    """A GET's page from the cache or from Redis; None whenever anything else would be
    needed (an unranked player, a missing set, Redis down or skipped), so the caller can
    hand the request to the path that handles those."""
    key = cache_key(path, query, target)
    found = services.pages.get(key)
    if found is not None:
        return found
    if services.breakers.redis.skipping:
        return None
    generation = services.pages.generation(target.board.id)
    meta = ranking.ReadMeta()
    try:
        answer = await from_redis(meta)
    except (ranking.SetMissing, RedisError, *REDIS_DOWN):
        return None  # the full path reads again, records the failure once, answers errors
    if answer is None:
        return None
    fresh = page(True, answer, "redis", meta.revision)
    services.pages.put(key, target.board.id, generation, fresh)
    return fresh


def matches(if_none_match: str | None, etag: str) -> bool:
    """Does an `If-None-Match` header name this ETag (weak comparison)?"""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def headers(services: Services, answer: Page) -> dict[str, str]:
    """Cache-Control, source and ETag of a read answer."""
    out = {
        "Cache-Control": f"public, max-age={services.settings.cache_max_age}",
        SOURCE_HEADER: answer.source,
    }
    if answer.etag is not None:
        out["ETag"] = answer.etag
    return out
