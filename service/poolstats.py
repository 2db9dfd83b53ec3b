"""Connection-pool usage of an API process: Redis and PostgreSQL pools as gauges.

Each API process samples its own pools every `SAMPLE_S` into multiprocess gauges
(service.metrics, mode "liveall"), and the process answering a scrape samples once more
just before it renders. A scrape-time collector alone would not do: with several granian
workers a scrape reaches one of them, so it would only ever show that worker's pools, a
different one at each scrape. The timer costs six mmap writes a second per process.

Series: `rankstream_pool_connections{pool=redis|postgres, state=in_use|idle}` and
`rankstream_pool_max_connections{pool}`; a pool's size is the sum of its two states.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from prometheus_client.multiprocess import mark_process_dead
from redis.asyncio import Redis

from service import background, metrics

log = logging.getLogger("rankstream.api")

SAMPLE_S = 1.0
# Files prometheus-client writes for "live*" gauges: gauge_liveall_<pid>.db and the like.
_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


@dataclass(frozen=True)
class PoolUsage:
    """One reading of a process's two pools."""

    redis_in_use: int
    redis_idle: int
    redis_max: int
    pg_size: int  # open connections, idle or not
    pg_idle: int
    pg_max: int


def read(redis: Redis, pg: asyncpg.Pool) -> PoolUsage:
    """The pools' counts now. redis-py has no public per-state count that is not tied to
    its OpenTelemetry attributes, so its pool's two collections are counted directly."""
    pool = redis.connection_pool
    return PoolUsage(
        redis_in_use=len(pool._in_use_connections),
        redis_idle=len(pool._available_connections),
        redis_max=pool.max_connections,
        pg_size=pg.get_size(),
        pg_idle=pg.get_idle_size(),
        pg_max=pg.get_max_size(),
    )


def record(usage: PoolUsage) -> None:
    """Set the gauges of this process."""
    metrics.POOL_CONNECTIONS.labels("redis", "in_use").set(usage.redis_in_use)
    metrics.POOL_CONNECTIONS.labels("redis", "idle").set(usage.redis_idle)
    metrics.POOL_MAX.labels("redis").set(usage.redis_max)
    metrics.POOL_CONNECTIONS.labels("postgres", "in_use").set(usage.pg_size - usage.pg_idle)
    metrics.POOL_CONNECTIONS.labels("postgres", "idle").set(usage.pg_idle)
    metrics.POOL_MAX.labels("postgres").set(usage.pg_max)


class PoolSampler:
    """Samples one process's pools on a timer, from start() until close()."""

    def __init__(self, redis: Redis, pg: asyncpg.Pool, interval_s: float = SAMPLE_S) -> None:
        self._redis = redis
        self._pg = pg
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> PoolUsage:
        """Read the pools and set the gauges; the reading."""
        usage = read(self._redis, self._pg)
        record(usage)
        return usage

    def start(self) -> None:
        """Sample now and then every interval in the background."""
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.sample()
            except Exception:  # a gauge is not worth the process
                log.exception("sampling pool usage failed")

    async def close(self) -> None:
        """Stop sampling; in multiprocess mode drop this process's series (it is going)."""
        await background.cancel_and_wait(self._task)
        self._task = None
        folder = multiprocess_dir()
        if folder is not None:
            mark_process_dead(os.getpid(), folder)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess folder, when this process writes to one."""
    return os.environ.get(metrics.MULTIPROC_ENV) if metrics.multiprocess() else None


def forget_dead(folder: str) -> list[int]:
    """Remove the live-gauge files of processes that no longer exist (a worker that crashed
    never ran close()), so a scrape does not report pools nobody holds. The pids removed."""
    gone = set()
    for path in Path(folder).glob("gauge_live*.db"):
        match = _LIVE_FILE.match(path.name)
        if match and not _alive(int(match.group(1))):
            gone.add(int(match.group(1)))
    for pid in sorted(gone):
        mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
    return sorted(gone)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
