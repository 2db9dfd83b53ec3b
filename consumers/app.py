"""The FastStream consumer app: batch reader, idle-entry claimer, stream upkeep.

Two consumers of the group per process. The reader (a FastStream subscriber) takes new
entries in batches. The claimer (Worker.claim_idle) takes over entries left pending by a
crashed or stuck consumer, one at a time, so a poison entry is isolated from its batch and
dead-lettered after `max_deliveries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import redis.exceptions
import uvloop
from faststream import FastStream
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis

from consumers import upkeep
from consumers.dead_letters import dead_letter
from consumers.exposition import serve as serve_metrics
from consumers.pipeline import Entry, Outcome, Persisted, Pipeline
from service import background, coldstart, logs, metrics, resp, stream
from service.connections import pg_pool, redis_client
from service.settings import Settings
from service.up import child_env

log = logging.getLogger("rankstream.consumer")

# Errors of a dependency, not of the batch: the batch is retried in place, not redelivered.
TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
)
MAX_BACKOFF_S = 2.0
STOP_DRAIN_S = 20.0
RESTART_DELAY_S = 0.5
T = TypeVar("T")
MAX_LOGGED_REQUEST_IDS = 50  # request ids listed per batch log line (all are counted)


class Worker:
    """One consumer process's state, shared by both subscribers."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.stopping = False
        self.redis: Redis
        self.pg: asyncpg.Pool
        self.pipeline: Pipeline
        self.upkeep_task: asyncio.Task[None] | None = None
        self.coldstart_task: asyncio.Task[None] | None = None
        self.claim_task: asyncio.Task[None] | None = None
        self.stop_claiming = asyncio.Event()
        self.recording: asyncio.Task[None] | None = None  # a reader batch, Postgres half
        self.in_flight: asyncio.Task[None] | None = None  # a reader batch, Redis half

    async def start(self) -> None:
        """Connect, and create the group at 0 so entries accepted before any consumer
        existed are read too (FastStream would create it at `$`)."""
        self.redis = redis_client(self.settings)
        # No session reset on release: one round trip less per lane transaction, each on a
        # batch's critical path; nothing here changes session state (see pg_pool).
        self.pg = await pg_pool(self.settings, session_reset=False)
        self.pipeline = Pipeline(self.settings, self.redis, self.pg)
        await stream.ensure_group(
            self.redis, self.settings.stream_key, self.settings.consumer_group
        )
        await upkeep.ensure_partitions(self.pg)

    async def stop(self) -> None:
        """Finish the batches in hand, then close connections."""
        self.stop_claiming.set()
        if self.claim_task is not None:
            await _settled(self.claim_task, "the claimer failed")  # ends after its entry
        await self.settle()
        # ResponseError: NOGROUP when Redis lost the group (run_workers then starts again)
        with contextlib.suppress(*TRANSIENT, redis.exceptions.ResponseError):
            async with asyncio.timeout(STOP_DRAIN_S):
                await self._finish_own_pending()
        for task in (self.upkeep_task, self.coldstart_task):
            await background.cancel_and_wait(task)
        await self.pg.close()
        await self.redis.aclose()

    async def handle(self, entries: list[Entry], claimed: bool) -> None:
        """Record a batch in Postgres, then write it to the sorted sets and acknowledge it.

        A full reader batch (a backlog) is handed to a task and the next batch is read
        meanwhile; a partial one is waited for, so new entries gather into one batch. The next
        batch's transactions start only once this one has committed, so transactions stay
        in stream order and each key's events are applied in it. The second half (Redis,
        acknowledgement) runs in the background while the next batch's transactions run:
        Redis writes are version-guarded, so their order does not matter. At most one batch
        is being recorded and one is in that second half.
        """
        if claimed:
            entries = await self._drop_exhausted(entries)
            if entries:
                await self._run(entries, claimed=True)
            return
        await self._settle_recording()
        self.recording = asyncio.create_task(self._run(entries, claimed=False))
        if len(entries) < self.settings.batch_size:
            # Caught up: reading at once would fetch a handful of entries and pay a batch's
            # round trips and commits for each handful. Let them gather meanwhile.
            await self._settle_recording()

    async def claim_idle(self) -> None:
        """The claimer: entries pending longer than `claim_idle_ms` are taken over and
        handled one at a time; once none is left, the next look is `claim_interval_ms` later.

        XPENDING's IDLE filter finds the first such entry in one pass over the pending list,
        inside Redis. FastStream's claimer (XAUTOCLAIM COUNT 1, which looks at ten pending
        entries a call and pauses only after a pass over them all) made ~190 round trips a
        second while a backlog kept 1,000+ entries pending, none of them idle: ~10 µs of
        consumer CPU an event and ~1.3 µs of Redis CPU."""
        s = self.settings
        name = claimer_name(self.name)
        while not self.stop_claiming.is_set():
            try:
                idle = await self.redis.xpending_range(
                    s.stream_key, s.consumer_group, "-", "+", 1, idle=s.claim_idle_ms
                )
                if idle:
                    # From that entry: it, or the next idle one if another claimer was first.
                    reply: Any = await self.redis.xautoclaim(
                        s.stream_key,
                        s.consumer_group,
                        name,
                        s.claim_idle_ms,
                        start_id=idle[0]["message_id"],
                        count=1,
                    )
                    entries = _live(reply[1])
                    if entries:
                        await self.handle(entries, claimed=True)
                    continue
            except (*TRANSIENT, redis.exceptions.ResponseError) as exc:
                # ResponseError: NOGROUP while Redis lost the group (the reader's restart
                # recreates it).
                log.warning("claiming idle entries failed: %r", exc)
            except Exception:
                # The entry stays pending: claimed again once idle, dead-lettered after
                # max_deliveries (as when FastStream's handler raised).
                log.exception("handling a claimed entry failed")
            await background.wait_set(self.stop_claiming, s.claim_interval_ms / 1000)

    async def _run(self, entries: list[Entry], claimed: bool) -> None:
        started = time.perf_counter()
        persisted = await self._retrying(entries, lambda: self.pipeline.persist(entries))
        if persisted is None:
            return
        await self._settle_writing()
        finish = self._finish(entries, persisted, claimed, started)
        if claimed:
            await finish
        else:
            self.in_flight = asyncio.create_task(finish)

    async def _finish_own_pending(self) -> None:
        """Handle entries delivered to this consumer that never reached the handler.

        FastStream drops a batch it read while stopping; those entries are pending under
        this consumer's names (the reader's and the claimer's). Finishing them here beats
        leaving them to another consumer's claimer, which would apply them after newer ones.
        """
        for name in (self.name, claimer_name(self.name)):
            reply: Any = await self.redis.xreadgroup(
                self.settings.consumer_group,
                name,
                {self.settings.stream_key: "0"},
                count=self.settings.batch_size,
            )
            for _stream, messages in reply or []:
                entries = _live(messages)
                if entries:
                    await self.handle(entries, claimed=True)

    async def settle(self) -> None:
        """Wait for the batch being recorded and the one being written to Redis, if any."""
        await self._settle_recording()
        await self._settle_writing()

    async def _settle_recording(self) -> None:
        task, self.recording = self.recording, None
        await _settled(task, "recording a batch failed")

    async def _settle_writing(self) -> None:
        task, self.in_flight = self.in_flight, None
        await _settled(task, "writing a batch to Redis failed")

    async def _finish(
        self, entries: list[Entry], persisted: Persisted, claimed: bool, started: float
    ) -> None:
        async def publish_and_acknowledge() -> bool:
            await self.pipeline.publish(persisted)
            outcome = persisted.outcome
            if outcome.ack:
                # Encoded by hand: redis-py spent ~1.9 µs of CPU per id of a 500-id XACK.
                await resp.send(self.redis, [self._xack(outcome.ack)])
            await dead_letter(
                self.settings, self.redis, self.pg, outcome.undecodable, "undecodable", 1
            )
            return True

        if await self._retrying(entries, publish_and_acknowledge) is None:
            return
        outcome = persisted.outcome
        self._record(entries, outcome, time.perf_counter() - started, claimed)
        if outcome.unknown_board and claimed:
            deliveries = await self._deliveries(outcome.unknown_board[0][0])
            if deliveries >= self.settings.max_deliveries:
                await dead_letter(
                    self.settings,
                    self.redis,
                    self.pg,
                    outcome.unknown_board,
                    "unknown board",
                    deliveries,
                )

    def _xack(self, ids: list[bytes]) -> bytes:
        settings = self.settings
        return resp.command(
            b"XACK", settings.stream_key.encode(), settings.consumer_group.encode(), *ids
        )

    async def _retrying(self, entries: list[Entry], step: Callable[[], Awaitable[T]]) -> T | None:
        """Run a step until it passes; dependency failures are retried in place, not by
        redelivery. None when stopping first (the entries stay pending for others)."""
        backoff = 0.05
        while True:
            try:
                return await step()
            except TRANSIENT as exc:
                metrics.dependency_error(metrics.dependency_of(exc) or "network", "consumer")
                if self.stopping:
                    log.warning("stopping with %d entries unacknowledged: %s", len(entries), exc)
                    return None
                log.warning("dependency failure, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                await self._keep_claimed(entries)

    def _record(
        self, entries: list[Entry], outcome: Outcome, elapsed: float, claimed: bool
    ) -> None:
        """One log line and the metrics of a finished batch."""
        metrics.BATCH_SIZE.observe(len(entries))
        metrics.BATCH_DURATION.observe(elapsed)
        metrics.BATCH_EVENTS.labels("new").inc(outcome.new_events)
        metrics.BATCH_EVENTS.labels("duplicate").inc(outcome.duplicates)
        log.info(
            "batch",
            extra=logs.fields(
                consumer=self.name,
                size=len(entries),
                new=outcome.new_events,
                duplicates=outcome.duplicates,
                undecodable=len(outcome.undecodable),
                unknown_board=len(outcome.unknown_board),
                claimed=claimed,
                duration_ms=round(elapsed * 1000, 3),
                request_ids=outcome.request_ids[:MAX_LOGGED_REQUEST_IDS],
                request_id_count=len(outcome.request_ids),
            ),
        )

    async def _drop_exhausted(self, entries: list[Entry]) -> list[Entry]:
        """Dead-letter claimed entries delivered more often than allowed; return the rest."""
        keep = []
        for entry in entries:
            deliveries = await self._deliveries(entry[0])
            if deliveries > self.settings.max_deliveries:
                reason = f"not processed after {deliveries - 1} deliveries"
                await dead_letter(self.settings, self.redis, self.pg, [entry], reason, deliveries)
            else:
                keep.append(entry)
        return keep

    async def _deliveries(self, stream_id: bytes) -> int:
        found = await self.redis.xpending_range(
            self.settings.stream_key,
            self.settings.consumer_group,
            min=stream_id,
            max=stream_id,
            count=1,
        )
        return int(found[0]["times_delivered"]) if found else 0

    async def _keep_claimed(self, entries: list[Entry]) -> None:
        # Reset the idle time (JUSTID does not count a delivery) so the claimers of other
        # consumers leave alone a batch this one is still retrying.
        with contextlib.suppress(*TRANSIENT):
            await self.redis.xclaim(
                self.settings.stream_key,
                self.settings.consumer_group,
                self.name,
                0,
                [i for i, _ in entries],
                justid=True,
            )


async def _settled(task: asyncio.Task[None] | None, failure: str) -> None:
    """Wait for a batch's task; a failure is logged, not raised: its entries stay
    unacknowledged, and the claimer hands them out again."""
    if task is not None:
        try:
            await task
        except Exception:
            log.exception(failure)


async def _raw(message: Any, _original: Any) -> StreamMessage[Any]:
    # The pipeline decodes entries itself (msgpack, typed); skip FastStream's JSON parsing.
    return StreamMessage(raw_message=message, body=b"")


async def _entries(message: StreamMessage[Any], _original: Any) -> list[Entry]:
    """The batch's entries as the handler's body, so the handler takes the body alone: a
    `Context()` parameter is resolved by FastStream's dependency injection in a worker
    thread, one thread hop per batch. (Its share of py-spy's samples, ~8%, was mostly that
    thread waiting: throughput did not change measurably without it.)"""
    raw = message.raw_message
    return list(zip(raw["message_ids"], raw["data"], strict=True))


def _live(messages: list[Any]) -> list[Entry]:
    """Entries read again from the pending list: one trimmed away meanwhile comes back with
    no fields, and there is nothing left to do for it."""
    return [(i, fields) for i, fields in messages if fields]


def _settle_gc() -> None:
    """Python's cyclic GC for a process that allocates a batch's objects by the thousand:
    what startup made (modules, the app) is frozen out of every collection, and young
    objects are collected every 20,000 allocations instead of 700 (a batch allocates
    tens of thousands: records, tuples, rows). Under py-spy, 12% of the consumer's busy
    samples were in gc_collect_main before, none after."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def claimer_name(reader: str) -> str:
    """The claimer's consumer name, beside its reader's."""
    return reader + "-claimer"


def consumer_name() -> str:
    """Unique per process, stable for its lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build(settings: Settings, signals: list[int] | None = None) -> FastStream:
    """The FastStream application of one consumer process (signals received: `signals`)."""
    broker = RedisBroker(
        settings.redis_url,
        graceful_timeout=30.0,
        log_level=logging.DEBUG,  # per-message logs only when asked for
    )
    worker = Worker(settings, consumer_name())
    reader = StreamSub(
        settings.stream_key,
        group=settings.consumer_group,
        consumer=worker.name,
        batch=True,
        max_records=settings.batch_size,
        polling_interval=settings.batch_block_ms,
    )

    @broker.subscriber(stream=reader, parser=_raw, decoder=_entries, ack_policy=AckPolicy.MANUAL)
    async def on_batch(entries: Any) -> None:
        await worker.handle(entries, claimed=False)

    app = FastStream(broker)

    @app.on_startup
    async def connect() -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:  # FastStream's handler, remembering the signal
            if signals is not None:
                signals.append(signum)
            app.exit()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        await worker.start()
        _settle_gc()

    @app.after_startup
    async def start_upkeep() -> None:
        worker.upkeep_task = asyncio.create_task(upkeep.run(worker.redis, worker.pg, settings))
        worker.coldstart_task = asyncio.create_task(
            coldstart.run(worker.redis, worker.pg, settings)
        )
        worker.claim_task = asyncio.create_task(worker.claim_idle())
        log.info("consumer %s reading %s", worker.name, settings.stream_key)

    @app.on_shutdown
    async def stopping() -> None:
        worker.stopping = True
        worker.stop_claiming.set()

    @app.after_shutdown
    async def disconnect() -> None:
        await worker.stop()

    return app


def run_workers(settings: Settings, workers: int = 1) -> int:
    """Run one consumer in this process, or supervise `workers` child processes.

    With RANKSTREAM_CONSUMER_METRICS_PORT set, this process always supervises (one worker
    or more) and serves their metrics, added up, on that port: one port per `rankstream
    consume` however many workers, and the workers' files in a folder of their own so no
    API's /metrics counts them too."""
    logs.configure(settings)
    if settings.consumer_metrics_port:
        exposition = serve_metrics(settings.host, settings.consumer_metrics_port)
        try:
            env = child_env(settings) | {
                metrics.MULTIPROC_ENV: exposition.folder,
                "RANKSTREAM_CONSUMER_METRICS_PORT": "0",  # the workers serve nothing
            }
            return _supervise(max(1, workers), env)
        finally:
            exposition.close()
    if workers <= 1:
        signals: list[int] = []
        while True:
            uvloop.run(build(settings, signals).run())
            if signals:
                return 0
            # Stopped without a signal: FastStream stops its subscribers for good when the
            # consumer group vanished (Redis flushed or restarted empty). Starting again
            # recreates the group.
            log.warning("consumer stopped without a signal (group lost?): starting again")
            time.sleep(RESTART_DELAY_S)
    return _supervise(workers, child_env(settings))


def _supervise(workers: int, env: dict[str, str]) -> int:
    """Run `workers` single-worker consumer processes until they exit, forwarding
    SIGTERM/SIGINT to them; the highest exit code."""
    cmd = [sys.executable, "-m", "service.cli", "consume", "--workers", "1"]
    children = [subprocess.Popen(cmd, env=env) for _ in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
