"""`fallback`: the Postgres reads (`service.pgranking`) on a board of N ranked players.

What the API answers when Redis is down, a set is missing or a board is in its cold-start
window. The players go into Postgres as in `rebuild` (COPY, display names, then VACUUM
ANALYZE), a handful of them banned (the ranking leaves them out), and each read is called
`--calls` times in a row through `service.pgranking` on an asyncpg pool (the API's path
without HTTP): top-10, a page at a deep offset (the middle of the board), the cursor page
that follows it, the rank of the bottom player, around radius 5 of the bottom player, and
the ranks of 100 players (a friends board). Latency is the median and p99 per read. Each
call runs under a `statement_timeout` (`--timeout-s`); a read whose call times out stops
there and records "> N s" (the window-function queries before issue 4's fix took seconds
per call at 1M rows).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from loadtest import results
from loadtest.stack import (
    BOARD_ID,
    PLAYER_PREFIX,
    Harness,
    add_stack_arguments,
    copy_players,
    scores_of,
)
from loadtest.stats import figure
from loadtest.stats import percentile as nearest_rank
from service import pgranking, ranking
from service.models import Board

BANNED = 10  # banned players, spread over the board


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--players", type=int, default=1_000_000, help="ranked players (1000000)")
    p.add_argument("--calls", type=int, default=50, help="calls of each read (50)")
    p.add_argument(
        "--timeout-s", type=float, default=30.0, help="statement_timeout of each call (30)"
    )
    results.add_tag_argument(p, "before")
    add_stack_arguments(p, rate_limits=False)


async def load_postgres(harness: Harness, n: int, seed: int) -> dict[str, Any]:
    """N rows of the board's `all` set and N named players by COPY, `BANNED` of them
    banned, then VACUUM ANALYZE (as autovacuum would have done)."""
    # Stamped a little in the past, as loadtest.dataset does: the same rows a rebuild reads.
    at = datetime.now(UTC) - timedelta(seconds=5)
    copy_s = await copy_players(harness, scores_of(n, seed), at, index_after=harness.owns_postgres)
    banned = [f"{PLAYER_PREFIX}{i}" for i in range(0, n, max(1, n // BANNED))][:BANNED]
    conn = await harness.pg()
    try:
        await conn.execute("UPDATE players SET banned = true WHERE player_id = ANY($1)", banned)
    finally:
        await conn.close()
    vacuum_s = await harness.vacuum_analyze()
    return {"players": n, "banned": len(banned), "postgres_copy_s": copy_s,
            "postgres_vacuum_s": vacuum_s}  # fmt: skip


async def _targets(pool: asyncpg.Pool, n: int, seed: int) -> dict[str, Any]:
    """The players and the cursor the reads ask about, found with plain SQL (so that they
    do not depend on the code under test): the bottom player, the (stored score, member)
    position in the middle of the board, and 100 players for the friends board."""
    bottom = await pool.fetchval(
        "SELECT ps.player_id FROM player_scores ps JOIN players pl USING (player_id)"
        " WHERE ps.board_id = $1 AND NOT pl.banned"
        ' ORDER BY ps.score, ps.player_id COLLATE "C" DESC LIMIT 1',
        BOARD_ID,
    )
    middle = await pool.fetchrow(
        "SELECT -score AS stored, player_id FROM player_scores WHERE board_id = $1"
        ' ORDER BY score DESC, player_id COLLATE "C" OFFSET $2 LIMIT 1',
        BOARD_ID,
        n // 2,
    )
    friends = [f"{PLAYER_PREFIX}{i}" for i in random.Random(seed).sample(range(n), 100)]
    return {
        "bottom": bottom,
        "cursor": ranking.encode_cursor(int(middle["stored"]), middle["player_id"]),
        "friends": friends,
    }


async def measure(harness: Harness, board: Board, args: argparse.Namespace) -> dict[str, Any]:
    """`--calls` timed calls of each read; a timed-out call ends its read."""
    pool = await asyncpg.create_pool(
        harness.settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"statement_timeout": str(int(args.timeout_s * 1000))},
    )
    assert pool is not None
    n = args.players
    reads: dict[str, dict[str, Any]] = {}
    try:
        t = await _targets(pool, n, args.seed)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "top-10": lambda: pgranking.top(pool, board, "all", "all", 10),
            f"page at offset {n // 2:,}": lambda: pgranking.top(
                pool, board, "all", "all", 10, offset=n // 2
            ),
            "cursor page from the middle": lambda: pgranking.top(
                pool, board, "all", "all", 10, cursor=t["cursor"]
            ),
            "rank of the bottom player": lambda: pgranking.player_rank(
                pool, board, "all", "all", t["bottom"]
            ),
            "around radius 5 of the bottom player": lambda: pgranking.around(
                pool, board, "all", "all", t["bottom"], 5
            ),
            "ranks of 100 players": lambda: pgranking.ranks_of(
                pool, board, "all", "all", t["friends"]
            ),
        }
        for name, call in calls.items():
            times: list[float] = []
            timed_out = False
            for _ in range(args.calls):
                t0 = time.perf_counter()
                try:
                    await call()
                except asyncpg.QueryCanceledError:
                    timed_out = True
                    break
                times.append(time.perf_counter() - t0)
            reads[name] = {"ms": [round(s * 1000, 2) for s in times], "timed_out": timed_out}
            shown = f"> {args.timeout_s:g} s" if timed_out else f"{len(times)} calls"
            median = statistics.median(times) * 1000 if times else None
            print(f"  {name}: {shown}, median {median} ms", flush=True)
    finally:
        await pool.close()
    return reads


def _figures(reads: dict[str, dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    out = []
    for name, found in reads.items():
        ms = found["ms"]
        note = f"{len(ms)} calls"
        if found["timed_out"]:
            note = (
                f"a call ran past the statement_timeout: > {timeout_s:g} s "
                f"(after {len(ms)} calls that finished)"
            )
        median = round(statistics.median(ms), 2) if ms and not found["timed_out"] else None
        p99 = nearest_rank(ms, 99) if ms and not found["timed_out"] else None
        out.append(figure(f"{name}, median", median, "ms", note=note))
        out.append(figure(f"{name}, p99", p99, "ms", note=note))
    return out


def run(args: argparse.Namespace) -> int:
    record = results.Record(
        "fallback",
        args,
        "none: service.pgranking called in the harness process, one call at a time, on an "
        "asyncpg pool",
        reads={},
    )
    out = record.out
    failed = False
    try:
        with Harness(keep_data=args.keep_data, fsync=not args.no_fsync) as harness:
            harness.start_servers()
            board = asyncio.run(harness.create_board(["all"]))
            print(f"loading {args.players:,} players into Postgres...", flush=True)
            out["data"] = asyncio.run(load_postgres(harness, args.players, args.seed))
            print(f"loaded: {out['data']}", flush=True)
            out["reads"] = asyncio.run(measure(harness, board, args))
    except Exception as exc:
        record.failed(exc)
        failed = True
    out["figures"] = _figures(out["reads"], args.timeout_s)
    record.save()
    return 1 if failed else 0
