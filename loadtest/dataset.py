"""The benchmark dataset: N players across boards with two windows, loaded the fast way.

Postgres gets real rows by COPY (`stack.copy_players`: `player_scores` in the current
period of every window, display names in `players`); Redis gets its sorted sets, versions
and names from `service.rebuild.rebuild_board`, the code `rankstream rebuild` runs, so
preparing a size also measures its rebuild time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from loadtest import stack
from loadtest.records import DataRecord
from service import boards, keys, periods, rebuild
from service.connections import pg_pool
from service.models import Window

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_count(text: str) -> int:
    """`10k`, `1M`, `2.5m`, `100000` -> an int."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgKMG]?)\s*", text)
    if not m:
        raise ValueError(f"not a count: {text!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])


def short_count(n: int) -> str:
    """10000 -> `10k`, 1000000 -> `1M` (labels and board ids)."""
    for suffix, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


@dataclass(frozen=True)
class Dataset:
    """What to load: `players` players, player i on board `board_ids[i % B]`."""

    players: int
    board_ids: tuple[str, ...]
    windows: tuple[Window, ...]
    prefix: str
    seed: int = 1

    @property
    def entries(self) -> int:
        """Ranked entries: one per player and window."""
        return self.players * len(self.windows)

    def per_board(self, index: int) -> int:
        """Players on board `board_ids[index]`."""
        b = len(self.board_ids)
        return self.players // b + (1 if index < self.players % b else 0)


def plan(players: int, boards: int, windows: tuple[Window, ...], tag: str, seed: int) -> Dataset:
    """The dataset of one size: boards `bench-<tag>-<k>`, players `p<tag>-<i>` (ids stay
    apart from other sizes' when several share one database)."""
    return Dataset(
        players=players,
        board_ids=tuple(f"bench-{tag.lower()}-{k}" for k in range(boards)),  # ids: lowercase
        windows=windows,
        prefix=f"p{tag}-",
        seed=seed,
    )


async def _key_bytes(redis: Redis, ds: Dataset) -> dict[str, int]:
    """MEMORY USAGE (sampled: cheap on big keys) of the first board's keys."""
    board = ds.board_ids[0]
    window = ds.windows[0]
    period = periods.period_id(window, datetime.now(UTC))
    out: dict[str, int] = {}
    for name, key in (
        ("sorted_set", keys.set_key(board, window, period)),
        ("versions_hash", keys.versions_key(board, window, period)),
        ("names_hash", keys.names_key(board)),
    ):
        used = await redis.memory_usage(key)
        out[name] = int(used or 0)
    return out


async def settle(harness: stack.Harness, redis: Redis, timeout_s: float = 900) -> float:
    """Do now the background work a bulk load sets off, so that it does not run during the
    measured runs: VACUUM the new rows (autovacuum would, a minute later), CHECKPOINT, and
    wait for the AOF rewrite the rebuild's writes trigger in Redis. Returns seconds."""
    t0 = time.perf_counter()
    conn = await harness.pg()
    try:
        await conn.execute("VACUUM player_scores, players")
        with contextlib.suppress(asyncpg.PostgresError):  # needs a superuser or pg_checkpoint
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    while time.perf_counter() - t0 < timeout_s:
        info = await redis.info("persistence")
        if not int(info.get("aof_rewrite_in_progress", 0)) and not int(
            info.get("aof_rewrite_scheduled", 0)
        ):
            break
        await asyncio.sleep(0.5)
    return round(time.perf_counter() - t0, 2)


async def prepare(harness: stack.Harness, ds: Dataset) -> DataRecord:
    """Create the boards, COPY the rows, rebuild every set, and measure what Redis holds."""
    for board_id in ds.board_ids:
        await harness.create_board(list(ds.windows), board_id)
    # Rows stamped a little in the past: the rebuild re-applies rows changed after its
    # snapshot time (now - 1 s), which would count the whole load twice.
    at = datetime.now(UTC) - timedelta(seconds=5)
    if any(periods.period_id(w, at) != periods.period_id(w, datetime.now(UTC)) for w in ds.windows):
        at = datetime.now(UTC)  # just past midnight: stay in the current period
    copy_s = await stack.copy_players(
        harness,
        stack.scores_of(ds.players, ds.seed),
        at,
        board_ids=ds.board_ids,
        windows=ds.windows,
        prefix=ds.prefix,
        index_after=harness.owns_postgres,
    )
    redis = Redis.from_url(harness.settings.redis_url)
    pool = await pg_pool(harness.settings)
    try:
        used_before = int((await redis.info("memory"))["used_memory"])
        t0 = time.perf_counter()
        sets: list[dict[str, Any]] = []
        by_id = await boards.load_all(pool)
        for board_id in ds.board_ids:
            report = await rebuild.rebuild_board(
                redis, pool, by_id[board_id], retention=harness.settings.retention_periods
            )
            sets += [{"board": board_id, **msgspec.to_builtins(s)} for s in report.sets]
        rebuild_s = round(time.perf_counter() - t0, 2)
        used = int((await redis.info("memory"))["used_memory"]) - used_before
        ranked = 0
        for board_id in ds.board_ids:
            for w in ds.windows:
                ranked += int(
                    await redis.zcard(keys.set_key(board_id, w, periods.period_id(w, at)))
                )
        key_bytes = await _key_bytes(redis, ds)
        settle_s = await settle(harness, redis)
    finally:
        await pool.close()
        await redis.aclose()
    return DataRecord(
        players=ds.players,
        boards=list(ds.board_ids),
        windows=list(ds.windows),
        ranked_entries=ranked,
        postgres_copy_s=copy_s,
        rebuild_s=rebuild_s,
        rebuild_sets=sets,
        settle_s=settle_s,
        redis_used_bytes=used,
        redis_bytes_per_entry=round(used / ranked, 1) if ranked else 0.0,
        key_bytes=key_bytes,
        sanity={"ranked_as_expected": ranked == ds.entries, "expected_entries": ds.entries},
    )
