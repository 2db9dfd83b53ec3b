"""Sampling during a measured window: CPU of each process group, memory, Redis and stream.

Runs as a task in the harness' event loop (the /proc walk in a thread, so probes keep
their timing) while wrk runs in another thread.
"""

from __future__ import annotations

import asyncio
import os
import time

from redis.asyncio import Redis

from loadtest.backlog import stream_state
from loadtest.procstat import CpuMeter, Group
from loadtest.records import SoakPoint, Usage
from service import background


async def redis_used_mib(redis: Redis) -> float | None:
    try:
        return round(int((await redis.info("memory"))["used_memory"]) / 2**20, 1)
    except Exception:  # a figure we can do without; the run goes on
        return None


class Monitor:
    """Start with `start()`, end with `stop()`; `points` every `memory_every_s` (soak)."""

    def __init__(
        self,
        groups: list[Group],
        redis: Redis,
        stream_key: str,
        consumer_group: str,
        interval_s: float = 1.0,
        memory_every_s: float | None = None,
    ) -> None:
        self.groups = groups
        self.redis = redis
        self.stream_key = stream_key
        self.consumer_group = consumer_group
        self.interval_s = interval_s
        self.memory_every_s = memory_every_s
        self.points: list[SoakPoint] = []
        self.extra_cpu_s: dict[str, float] = {}
        self._lengths: list[int] = []
        self._lags: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> Monitor:
        self._meter = await asyncio.to_thread(CpuMeter, self.groups)
        self._memory_start = await asyncio.to_thread(self._meter.memory_mib)
        self._redis_start = await redis_used_mib(self.redis)
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._loop())
        return self

    async def _sample_stream(self) -> tuple[int, int | None, int]:
        s = await stream_state(self.redis, self.stream_key, self.consumer_group)
        self._lengths.append(s.length)
        if s.lag is not None:
            self._lags.append(s.lag)
        return s.length, s.lag, s.pending

    async def _loop(self) -> None:
        next_memory = 0.0
        while not self._stop.is_set():
            await asyncio.to_thread(self._meter.read)
            length, lag, pending = await self._sample_stream()
            t = time.perf_counter() - self._t0
            if self.memory_every_s is not None and t >= next_memory:
                memory = await asyncio.to_thread(self._meter.memory_mib)
                used = await redis_used_mib(self.redis)
                self.points.append(SoakPoint(round(t, 1), memory, used, length, lag, pending))
                next_memory += self.memory_every_s
            await background.wait_set(self._stop, self.interval_s)

    async def stop(self) -> Usage:
        """End sampling; what was used from start() to now."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await asyncio.to_thread(self._meter.read)
        seconds = time.perf_counter() - self._t0
        length, lag, pending = await self._sample_stream()
        memory_end = await asyncio.to_thread(self._meter.memory_mib)
        redis_end = await redis_used_mib(self.redis)
        if self.memory_every_s is not None:
            self.points.append(
                SoakPoint(round(seconds, 1), memory_end, redis_end, length, lag, pending)
            )
        cores = os.cpu_count() or 1
        cpu_s = self._meter.cpu_seconds()
        cpu_s.update(self.extra_cpu_s)
        cpu = {k: round(v / seconds * 100, 1) for k, v in cpu_s.items()}
        machine = round(self._meter.machine_busy_share() * cores * 100, 1)
        cpu["other"] = round(max(0.0, machine - sum(cpu.values())), 1)
        return Usage(
            seconds=round(seconds, 2),
            cpu_pct=cpu,
            machine_pct=machine,
            cores=cores,
            memory_mib_start=self._memory_start,
            memory_mib_end=memory_end,
            redis_used_mib_start=self._redis_start,
            redis_used_mib_end=redis_end,
            stream_length_max=max(self._lengths),
            stream_length_end=length,
            lag_max=max(self._lags) if self._lags else None,
            lag_end=lag,
            pending_end=pending,
        )
