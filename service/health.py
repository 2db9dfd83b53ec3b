"""Dependency checks behind the readiness endpoint."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import platform

import msgspec

from service import metrics
from service.state import Services

log = logging.getLogger("rankstream.health")

CHECK_TIMEOUT_S = 2.0


class Readiness(msgspec.Struct, frozen=True):
    """Each dependency's state; `down` lists what failed."""

    status: str
    redis: str
    postgres: str
    consumer_group: str
    down: list[str]


class StreamState(msgspec.Struct, frozen=True):
    """The submission stream as Redis reports it (None: could not be read)."""

    key: str
    group: str
    length: int | None = None
    lag: int | None = None
    pending: int | None = None
    consumers: int | None = None


class Versions(msgspec.Struct, frozen=True):
    """Versions of rankstream, Python and the servers (None: server unreachable)."""

    rankstream: str
    python: str
    redis: str | None
    postgres: str | None


class Summary(msgspec.Struct, frozen=True):
    """Answer of `/health`: readiness, versions and the stream's backlog."""

    status: str
    down: list[str]
    versions: Versions
    stream: StreamState


async def _redis_ok(services: Services) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return bool(await services.redis.ping())
    except Exception:
        return False


async def _postgres_ok(services: Services) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), services.pg.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception:
        return False


async def _group_ok(services: Services) -> bool:
    """The consumer group exists on the stream (False too when Redis is down)."""
    state = await stream_state(services)
    return state.lag is not None or state.pending is not None


async def stream_state(services: Services) -> StreamState:
    """Length of the stream, and lag/pending/consumers of the group, from XINFO GROUPS."""
    settings = services.settings
    out = StreamState(key=settings.stream_key, group=settings.consumer_group)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with services.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(settings.stream_key)
                pipe.xinfo_groups(settings.stream_key)
                length, groups = await pipe.execute(raise_on_error=False)
    except Exception as exc:
        metrics.dependency_error("redis", "health")
        log.debug("stream state unavailable: %r", exc)
        return out
    if isinstance(length, Exception):
        return out
    wanted = settings.consumer_group.encode()
    group = None
    if not isinstance(groups, Exception):
        names = (wanted, settings.consumer_group)
        group = next((g for g in groups if g.get("name") in names), None)
    if group is None:
        return msgspec.structs.replace(out, length=int(length))
    lag = group.get("lag")
    return msgspec.structs.replace(
        out,
        length=int(length),
        lag=int(lag) if lag is not None else None,
        pending=int(group.get("pending", 0)),
        consumers=int(group.get("consumers", 0)),
    )


async def check_ready(services: Services) -> Readiness:
    """Ask Redis and PostgreSQL for real, in parallel, and look for the consumer group."""
    redis_ok, pg_ok, group_ok = await asyncio.gather(
        _redis_ok(services), _postgres_ok(services), _group_ok(services)
    )
    group_ok = group_ok and redis_ok
    checks = (("redis", redis_ok), ("postgres", pg_ok), ("consumer_group", group_ok))
    down = [name for name, ok in checks if not ok]
    return Readiness(
        status="ok" if not down else "degraded",
        redis="ok" if redis_ok else "down",
        postgres="ok" if pg_ok else "down",
        consumer_group="ok" if group_ok else "missing" if redis_ok else "unknown",
        down=down,
    )


async def _redis_version(services: Services) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            info = await services.redis.info("server")
    except Exception:
        return None
    version = info.get("valkey_version") or info.get("redis_version")
    return str(version) if version is not None else None


async def _postgres_version(services: Services) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), services.pg.acquire() as conn:
            return str(await conn.fetchval("SHOW server_version"))
    except Exception:
        return None


def _own_version() -> str:
    try:
        return importlib.metadata.version("rankstream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def summary(services: Services) -> Summary:
    """Readiness, versions and the stream's backlog in one answer."""
    ready, redis_version, pg_version, state = await asyncio.gather(
        check_ready(services),
        _redis_version(services),
        _postgres_version(services),
        stream_state(services),
    )
    return Summary(
        status=ready.status,
        down=ready.down,
        versions=Versions(
            rankstream=_own_version(),
            python=platform.python_version(),
            redis=redis_version,
            postgres=pg_version,
        ),
        stream=state,
    )
