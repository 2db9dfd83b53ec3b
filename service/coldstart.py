"""Cold start: sorted sets rebuilt from Postgres on their own when Redis lost them.

Redis is a cache of rankings (DESIGN guarantee 4). When it restarts empty, is flushed, or
loses one board's keys, a background task of every consumer process notices within
`coldstart_interval_ms` and rebuilds what is missing with `service.rebuild` (zero-downtime:
temporary key, atomic swap, re-apply of later changes), while reads fall back to Postgres.

Detection, per board:
- A marker key `lb:{board}:warm` says the board's sets in Redis are complete. If it is
  missing, Redis lost the board (a FLUSHALL, a restart without persistence). Consumers may
  already have recreated *partial* sets from new submissions by then, so key existence
  alone would not tell; the marker does. Reads use a board's sets only while its marker
  says `done:` (service.ranking), so until the recovery is finished they are answered
  from Postgres, never from a partial set. Creating a board sets `done:` at once
  (`mark_new_board`): a new board has nothing in Postgres that Redis could lack.
- With the marker present, a candidate set (each window's current period and the retained
  past periods) whose versions hash is missing while Postgres has rows for it is rebuilt
  too (keys deleted by hand or evicted). The versions hash, not the set, is checked: a
  set whose players are all banned has no members but a hash of tombstones.
- An EMPTY period legitimately has no keys: a set is only rebuilt when Postgres has rows.

Only one process works on a board at a time: a Redis lock (`SET NX PX` with a random token,
refreshed while working, released by a compare-and-delete script). After taking the lock the
state is checked again, so a process that lost the race to one that has just finished does
nothing. A recovery first sets the marker to `pending:<token>` and, once every lost set is
rebuilt, swaps it to `done:<token>` only if it still holds its own pending value
(compare-and-set). A FLUSHALL during the recovery removes the pending marker, so the swap
fails and the next pass starts over; a process killed half-way leaves `pending:`, which
counts as cold: the next holder of the lock (after the dead one's lock expired) redoes it.

Each completed recovery of a board increments `rankstream:coldstart:rebuilds`; each set
rebuilt logs one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import background, boards, keys, periods, rankcache, rebuild
from service.models import Board, Window
from service.settings import Settings

log = logging.getLogger("rankstream.coldstart")

LOCK_TTL_MS = 30_000
REBUILDS_KEY = "rankstream:coldstart:rebuilds"
EXPIRY_MARGIN_MS = 60_000  # a period leaving Redis within this margin is not rebuilt

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_FINISH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Which of the given (window, period) sets of a board have rows: one probe each of the
# ranking index (board, window, period, score, ...), which ORDER BY score LIMIT 1 asks for.
# Written as EXISTS, the generic plan that Postgres settles on from a prepared statement's
# sixth run probed the index of changed rows on the board alone and filtered the window
# and period: every row of the board read for a period with none, which a pass asks about
# each time (the retained past periods of a new board). At 1M players, 240-860 ms a call
# instead of 0.2 ms, a quarter to a third of a core while consumers ran.
WITH_ROWS = """
SELECT c.w AS window_name, c.p AS period
FROM unnest($2::text[], $3::text[]) AS c(w, p)
CROSS JOIN LATERAL (
    SELECT 1 FROM player_scores ps
    WHERE ps.board_id = $1 AND ps.window_name = c.w AND ps.period = c.p
    ORDER BY ps.score
    LIMIT 1
) AS one
"""


class Recovered(msgspec.Struct, frozen=True):
    """What one pass rebuilt for one board."""

    board_id: str
    cold: bool
    sets: list[rebuild.SetRebuilt]


def marker_key(board: str) -> str:
    """Present while the board's sets in Redis are complete (holds the pass's token)."""
    return keys.warm_key(board)


def lock_key(board: str) -> str:
    """The lock of the one process rebuilding a board's missing sets."""
    return f"rankstream:coldstart:lock:{board}"


async def mark_new_board(redis: Redis, board_id: str) -> None:
    """A board just created has no rows in Postgres, so Redis holds all of it: reads may use
    its sets at once (service.ranking reads only boards with a `done:` marker). Without
    Redis the marker stays missing, and the consumers' next pass sets it."""
    try:
        await redis.set(marker_key(board_id), "done:created")
    except RedisError as exc:
        log.warning("new board %s not marked warm: %r", board_id, exc)


class LockLost(Exception):
    """The lock expired or was taken over while a rebuild was running."""


@contextlib.asynccontextmanager
async def locked(redis: Redis, name: str, ttl_ms: int = LOCK_TTL_MS) -> AsyncIterator[bool]:
    """Hold a Redis lock while inside (yields False, holding nothing, if it is taken).

    The lock is refreshed every third of its TTL so a long rebuild keeps it; it is released
    by a compare-and-delete, so a process never releases a lock it no longer owns."""
    token = secrets.token_hex(16)
    if not await redis.set(name, token, nx=True, px=ttl_ms):
        yield False
        return
    refresh = redis.register_script(_REFRESH_LUA)

    async def keep() -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            if not await refresh(keys=[name], args=[token, ttl_ms]):
                log.warning("cold-start lock %s lost", name)
                return

    keeper = asyncio.create_task(keep())
    try:
        yield True
    finally:
        try:
            await background.cancel_and_wait(keeper)
        finally:  # even when cancelled meanwhile: else the lock blocks others for its TTL
            await redis.register_script(_RELEASE_LUA)(keys=[name], args=[token])


def candidates(board: Board, retention: int, now: datetime) -> list[tuple[Window, str]]:
    """The sets of a board that belong in Redis now: each window's current period and the
    retained past periods that have not (almost) expired."""
    now_ms = int(now.timestamp() * 1000)
    out: list[tuple[Window, str]] = []
    for window in board.windows:
        period = periods.period_id(window, now)
        for _ in range(retention + 1 if window != "all" else 1):
            expire_at = rankcache.expire_at_ms(window, period, retention)
            if expire_at == 0 or expire_at > now_ms + EXPIRY_MARGIN_MS:
                out.append((window, period))
            period = periods.previous(window, period)
    return out


async def _missing(
    redis: Redis, pg: asyncpg.Pool, board: Board, retention: int
) -> tuple[bool, list[tuple[Window, str]]]:
    """(cold, sets to rebuild): sets with rows in Postgres that Redis lost."""
    targets = candidates(board, retention, datetime.now(UTC))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(marker_key(board.id))
        for window, period in targets:
            pipe.exists(keys.versions_key(board.id, window, period))
        found = await pipe.execute()
    marker = found[0]
    cold = marker is None or bytes(marker).startswith(b"pending:")
    lost = [t for t, present in zip(targets, found[1:], strict=True) if cold or not present]
    if not lost:
        return cold, []
    rows = await pg.fetch(WITH_ROWS, board.id, [w for w, _ in lost], [p for _, p in lost])
    with_rows = {(r["window_name"], r["period"]) for r in rows}
    return cold, [t for t in lost if t in with_rows]


async def recover_board(
    redis: Redis, pg: asyncpg.Pool, board: Board, retention: int
) -> Recovered | None:
    """Rebuild what Redis lost of one board, under its lock; None when nothing was done
    (nothing lost, or another process holds the lock)."""
    cold, need = await _missing(redis, pg, board, retention)
    if not cold and not need:
        return None
    async with locked(redis, lock_key(board.id)) as mine:
        if not mine:
            return None
        cold, need = await _missing(redis, pg, board, retention)  # someone may have finished
        if not cold and not need:
            return None
        token = secrets.token_hex(8)
        pending, finished = f"pending:{token}", f"done:{token}"
        if cold:
            await redis.set(marker_key(board.id), pending)
        # A cold board's names hash may hold only what consumers wrote since Redis lost it:
        # every rebuilt set writes its names then (and when the names hash is gone).
        names = cold or not await redis.exists(keys.names_key(board.id))
        done: list[rebuild.SetRebuilt] = []
        for window, period in need:
            result = await rebuild.rebuild_set(
                redis, pg, board, window, period, retention=retention, names=names
            )
            done.append(result)
            log.info(
                "cold start: rebuilt %s %s:%s (%d rows, %.2fs)",
                board.id, window, period, result.rows, result.seconds,
            )  # fmt: skip
        finish = redis.register_script(_FINISH_LUA)
        if cold and not await finish(keys=[marker_key(board.id)], args=[pending, finished]):
            log.warning("cold start: %s lost its marker during the recovery: again", board.id)
            return None
        await redis.incr(REBUILDS_KEY)
    return Recovered(board_id=board.id, cold=cold, sets=done)


async def recover(redis: Redis, pg: asyncpg.Pool, retention: int) -> list[Recovered]:
    """One pass over every board."""
    out: list[Recovered] = []
    for board in (await boards.load_all(pg)).values():
        found = await recover_board(redis, pg, board, retention)
        if found is not None:
            out.append(found)
    return out


async def run(redis: Redis, pg: asyncpg.Pool, settings: Settings) -> None:
    """Check every `coldstart_interval_ms` until cancelled; failures are logged and retried."""
    while True:
        started = time.monotonic()
        try:
            await recover(redis, pg, settings.retention_periods)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dependency down: the next pass retries
            log.warning("cold-start check failed: %r", exc)
        elapsed = time.monotonic() - started
        await asyncio.sleep(max(0.05, settings.coldstart_interval_ms / 1000 - elapsed))
