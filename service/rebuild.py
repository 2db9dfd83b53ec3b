"""Zero-downtime rebuild of sorted sets from Postgres `player_scores`.

One set (board, window, period) is rebuilt like this:

1. A REPEATABLE READ transaction fixes a snapshot and a time `since` no later than the
   start of any transaction still running (so every row committed after the snapshot has
   `updated_at >= since`).
2. The snapshot's rows stream in chunks, already formatted by Postgres as Redis protocol
   arguments, into a temporary set and its versions hash (`<set>:rebuild:<token>`, same
   hash tag) and the board's names hash, in large pipelined commands. Two cursors read the
   one snapshot side by side (the second connection imports it): the members best-last, so
   that Redis inserts every member at the head of the skiplist, and the versions and names
   in no order, which Redis can take while Postgres starts the sorted stream.
   Banned players get a tombstone version (`version|`), no member and no name.
3. A small Lua script swaps atomically: RENAME temp -> real for the set and the versions
   hash (or deletes the real keys when the set has no rows), sets the period's expiry and
   bumps the board revision. Readers see the old set or the new one, never a gap.
4. Every row with `updated_at >= since` is re-applied through the version-guarded apply
   script: a submission the consumers committed during the rebuild (and wrote to the old
   set, which the swap replaced) is therefore never lost, and re-applying a row the
   snapshot already had changes nothing.

Concurrent rebuilds of one set are safe too: each one re-applies what changed after its own
snapshot once it has swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import keys, moderation, periods, queries, rankcache, resp
from service.models import Board, Window

Progress = Callable[[int, int], Awaitable[None]]
"""Called with (rows done, rows in total) after every chunk."""

CHUNK_ROWS = 50_000  # rows per chunk, and so members per ZADD / fields per HSET
REAPPLY_ROWS = 10_000  # rows per apply-script call: each one blocks Redis while it runs
TEMP_TTL_MS = 3_600_000  # a crashed rebuild's temporary keys go away on their own

_SWAP_LUA = """
-- KEYS[1] temp set, KEYS[2] temp versions, KEYS[3] set, KEYS[4] versions, KEYS[5] revision
-- ARGV[1] expire-at in unix ms (0: never)
local expire_at = tonumber(ARGV[1])
for i = 1, 2 do
  local temp, real = KEYS[i], KEYS[i + 2]
  if redis.call('EXISTS', temp) == 1 then
    if expire_at > 0 then
      redis.call('PEXPIREAT', temp, expire_at)
    else
      redis.call('PERSIST', temp)
    end
    redis.call('RENAME', temp, real)
  else
    redis.call('DEL', real)
  end
end
return redis.call('INCR', KEYS[5])
"""


class SetRebuilt(msgspec.Struct, frozen=True):
    """What one set's rebuild did."""

    window: Window
    period: str
    rows: int
    ranked: int
    reapplied: int
    seconds: float


class RebuildReport(msgspec.Struct, frozen=True):
    """What a board's rebuild did."""

    board_id: str
    sets: list[SetRebuilt]
    rows: int
    seconds: float


def temp_key(board: str, window: str, period: str, token: str) -> str:
    """The temporary set of a rebuild (same hash tag as the real one)."""
    return f"{keys.set_key(board, window, period)}:rebuild:{token}"


def is_temp_key(key: str) -> bool:
    """True for a rebuild's temporary set or versions hash."""
    return ":rebuild:" in key


def in_retention(window: Window, period: str, retention: int, now_ms: int) -> bool:
    """True when a period's sets belong in Redis (current or retained)."""
    expire_at = rankcache.expire_at_ms(window, period, retention)
    return expire_at == 0 or expire_at > now_ms


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(board: Board, window: Window, period: str, r: asyncpg.Record) -> rankcache.ScoreRow:
    return rankcache.ScoreRow(
        board_id=board.id,
        window=window,
        period=period,
        player_id=r["player_id"],
        score=r["score"],
        version=r["version"],
        reached_at=r["reached_at"],
    )


def cache_rows(
    board: Board, window: Window, period: str, records: Iterable[asyncpg.Record]
) -> list[rankcache.ScoreRow | rankcache.Removal]:
    """Rows as the apply script takes them: banned players leave the set."""
    out: list[rankcache.ScoreRow | rankcache.Removal] = []
    for r in records:
        if r["banned"]:
            out.append(rankcache.Removal(board.id, window, period, r["player_id"], r["version"]))
        else:
            out.append(_row(board, window, period, r))
    return out


def _bulk_command(name: str, key: str, pairs: list[str]) -> bytes:
    """A command of pre-formatted argument pairs (RESP bulk strings, two per pair)."""
    head = f"*{2 * len(pairs) + 2}\r\n${len(name)}\r\n{name}\r\n${len(key)}\r\n{key}\r\n"
    return (head + "".join(pairs)).encode()


def _zadd_commands(temp_set: str, records: list[asyncpg.Record]) -> list[bytes]:
    """The ZADD of a chunk of queries.SET_MEMBERS_IN_INSERT_ORDER rows, and the temp TTL."""
    ttl = str(TEMP_TTL_MS).encode()
    return [
        _bulk_command("ZADD", temp_set, [r[0] for r in records]),
        resp.command(b"PEXPIRE", temp_set.encode(), ttl),
    ]


def _field_commands(board: Board, temp_versions: str, records: list[asyncpg.Record]) -> list[bytes]:
    """The HSETs of a chunk of queries.SET_FIELDS rows (versions, names), and the temp TTL."""
    ttl = str(TEMP_TTL_MS).encode()
    commands = [
        _bulk_command("HSET", temp_versions, [r[0] for r in records]),
        resp.command(b"PEXPIRE", temp_versions.encode(), ttl),
    ]
    names = [r[1] for r in records if r[1] is not None]
    if names:
        commands.append(_bulk_command("HSET", keys.names_key(board.id), names))
    return commands


async def _stream(
    conn: asyncpg.Connection,
    query: str,
    args: tuple[Any, ...],
    chunk_rows: int,
    redis: Redis,
    commands_of: Callable[[list[asyncpg.Record]], list[bytes]],
    after_chunk: Callable[[int], Awaitable[None]],
) -> None:
    """Send a query's rows to Redis chunk by chunk, as `commands_of` encodes them; Postgres
    produces chunk k+1 while Redis takes chunk k. `after_chunk` gets each chunk's size."""
    cursor = await conn.cursor(query, *args)
    upcoming = asyncio.ensure_future(cursor.fetch(chunk_rows))
    sending: asyncio.Future[list[Any]] | None = None
    try:
        while records := await upcoming:
            upcoming = asyncio.ensure_future(cursor.fetch(chunk_rows))
            commands = commands_of(records)
            if sending is not None:
                await sending
            sending = asyncio.ensure_future(resp.send(redis, commands))
            await after_chunk(len(records))
        if sending is not None:
            await sending
    except BaseException:
        for pending in (upcoming, sending):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        raise


SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")
SECOND_CONNECTION_TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def _in_snapshot(pg: asyncpg.Pool, snapshot: str) -> AsyncIterator[asyncpg.Connection]:
    """A second pooled connection in a read-only transaction that sees `snapshot` (exported
    by the rebuild's own transaction, which stays open meanwhile). The wait for it is bounded:
    rebuilds holding their first connection must not wait forever on a full pool."""
    if not SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    async with (
        pg.acquire(timeout=SECOND_CONNECTION_TIMEOUT_S) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        # must be the transaction's first statement; it takes no parameters
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        await conn.execute(queries.REBUILD_WORK_MEM)
        yield conn


async def rebuild_set(
    redis: Redis,
    pg: asyncpg.Pool,
    board: Board,
    window: Window,
    period: str,
    *,
    retention: int,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
    done_before: int = 0,
    total_hint: int | None = None,
) -> SetRebuilt:
    """Rebuild one set from Postgres with no downtime; see the module docstring."""
    started = time.monotonic()
    token = secrets.token_hex(8)
    temp_set = temp_key(board.id, window, period, token)
    temp_versions = temp_set + ":v"
    rows = ranked = 0
    try:
        async with (
            pg.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            since: datetime = await conn.fetchval(queries.REBUILD_SNAPSHOT_TIME)
            await conn.execute(queries.REBUILD_WORK_MEM)
            count = await conn.fetchval(queries.COUNT_SET_ROWS, board.id, window, period)
            total = total_hint if total_hint is not None else done_before + count
            snapshot: str = await conn.fetchval(queries.EXPORT_SNAPSHOT)
            args = (board.id, window, period)

            async def members_sent(n: int) -> None:
                nonlocal ranked
                ranked += n

            async def fields_sent(n: int) -> None:
                nonlocal rows
                rows += n
                if progress is not None:
                    await progress(done_before + rows, max(total, done_before + rows))

            def members(on: asyncpg.Connection) -> Coroutine[Any, Any, None]:
                query = queries.SET_MEMBERS_IN_INSERT_ORDER[(board.order, board.ties)]
                return _stream(
                    on,
                    query,
                    args,
                    chunk_rows,
                    redis,
                    lambda records: _zadd_commands(temp_set, records),
                    members_sent,
                )

            def fields(on: asyncpg.Connection) -> Coroutine[Any, Any, None]:
                return _stream(
                    on,
                    queries.SET_FIELDS[board.ties],
                    args,
                    chunk_rows,
                    redis,
                    lambda records: _field_commands(board, temp_versions, records),
                    fields_sent,
                )

            if pg.get_max_size() < 2:  # a pool of one connection: one stream after the other
                await members(conn)
                await fields(conn)
            else:
                # Two streams of one snapshot: the sorted members on this connection, the
                # versions and names (in no order) on a second one, so Redis works on the
                # hashes while Postgres starts the sorted stream.
                async with (
                    _in_snapshot(pg, snapshot) as side,
                    asyncio.TaskGroup() as streams,
                ):
                    streams.create_task(members(conn))
                    streams.create_task(fields(side))
        expire_at = rankcache.expire_at_ms(window, period, retention)
        swap = redis.register_script(_SWAP_LUA)
        await swap(
            keys=[
                temp_set,
                temp_versions,
                keys.set_key(board.id, window, period),
                keys.versions_key(board.id, window, period),
                keys.revision_key(board.id),
            ],
            args=[expire_at],
        )
    except BaseException:
        await redis.delete(temp_set, temp_versions)
        raise
    reapplied = await reapply_since(redis, pg, board, window, period, since, retention)
    await _honour_removals(redis, pg, board, window, period, since)
    if progress is not None and rows == 0:
        await progress(done_before, total_hint if total_hint is not None else done_before)
    return SetRebuilt(
        window=window,
        period=period,
        rows=rows,
        ranked=ranked,
        reapplied=reapplied,
        seconds=round(time.monotonic() - started, 3),
    )


async def reapply_since(
    redis: Redis,
    pg: asyncpg.Pool,
    board: Board,
    window: Window,
    period: str,
    since: datetime,
    retention: int,
) -> int:
    """Re-apply rows changed at or after `since` through the version guard; rows applied."""
    records = await pg.fetch(queries.SET_ROWS_CHANGED_SINCE, board.id, window, period, since)
    if not records:
        return 0
    script = rankcache.apply_script(redis)
    applied = 0
    for i in range(0, len(records), REAPPLY_ROWS):
        rows = cache_rows(board, window, period, records[i : i + REAPPLY_ROWS])
        applied += await rankcache.apply_rows(redis, script, {board.id: board}, rows, retention)
    return applied


FORGOTTEN_MARGIN_MS = 60_000  # removals are stamped by API hosts' clocks, `since` by Postgres'


async def _honour_removals(
    redis: Redis, pg: asyncpg.Pool, board: Board, window: Window, period: str, since: datetime
) -> None:
    """Undo what the swap brought back: players removed (entry removal, erasure) after the
    snapshot, and every key of a board deleted meanwhile."""
    if await pg.fetchval(queries.SELECT_BOARD_EXISTS, board.id) is None:
        await moderation.delete_board_keys(redis, board.id)
        return
    since_ms = int(since.timestamp() * 1000) - FORGOTTEN_MARGIN_MS
    raw = await redis.zrangebyscore(moderation.forgotten_key(board.id), since_ms, "+inf")
    if not raw:
        return
    digests = {d.decode() if isinstance(d, bytes) else str(d) for d in raw}
    players: list[str] = []
    versions = keys.versions_key(board.id, window, period)
    async for field, _ in redis.hscan_iter(versions, count=10_000):
        player = field.decode() if isinstance(field, bytes) else str(field)
        if moderation.player_digest(player) in digests:
            players.append(player)
    if players:
        await moderation.settle(redis, pg, {(board.id, window, period): players}, 0)
        # the rebuild wrote names from its snapshot: drop those of players now off the board
        staying = {
            r["player_id"] for r in await pg.fetch(queries.PLAYERS_ON_BOARD, board.id, players)
        }
        gone = [p for p in players if p not in staying]
        if gone:
            await redis.hdel(keys.names_key(board.id), *gone)


async def sets_of(
    pg: asyncpg.Pool | asyncpg.Connection, board: Board, retention: int
) -> list[tuple[Window, str, int]]:
    """(window, period, rows) of every set of the board that belongs in Redis: its windows'
    current periods and the retained past periods that have rows."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    found: dict[tuple[Window, str], int] = {
        (w, periods.period_id(w, now)): 0 for w in board.windows
    }
    for r in await pg.fetch(queries.BOARD_SETS, board.id):
        window, period = r["window_name"], r["period"]
        if window in board.windows and in_retention(window, period, retention, now_ms):
            found[(window, period)] = r["rows"]
    return [(w, p, n) for (w, p), n in sorted(found.items())]


async def rebuild_board(
    redis: Redis,
    pg: asyncpg.Pool,
    board: Board,
    *,
    retention: int,
    window: Window | None = None,
    period: str | None = None,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> RebuildReport:
    """Rebuild every set of a board (or those of one window, or one window period)."""
    started = time.monotonic()
    if window is not None and period is not None:
        targets = [(window, period, await _count(pg, board, window, period))]
    else:
        targets = [
            t for t in await sets_of(pg, board, retention) if window is None or t[0] == window
        ]
    total = sum(n for _, _, n in targets)
    done = 0
    sets: list[SetRebuilt] = []
    for w, p, _ in targets:
        result = await rebuild_set(
            redis,
            pg,
            board,
            w,
            p,
            retention=retention,
            progress=progress,
            chunk_rows=chunk_rows,
            done_before=done,
            total_hint=max(total, done),
        )
        sets.append(result)
        done += result.rows
        total = max(total, done)
    return RebuildReport(
        board_id=board.id,
        sets=sets,
        rows=done,
        seconds=round(time.monotonic() - started, 3),
    )


async def _count(pg: asyncpg.Pool, board: Board, window: Window, period: str) -> int:
    count: int = await pg.fetchval(queries.COUNT_SET_ROWS, board.id, window, period)
    return count


# --- jobs: a rebuild run in the background of an API process ------------------------------
# State lives in a Redis hash so every API worker can answer for any job.

JOB_TTL_S = 86_400
JobState = Literal["queued", "running", "done", "failed"]


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """A background job's progress."""

    id: str
    kind: str
    board_id: str
    window: str | None
    period: str | None
    state: JobState
    done: int
    total: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    result: RebuildReport | None


def job_key(job_id: str) -> str:
    """The hash holding a job's state."""
    return f"rankstream:job:{job_id}"


def _stamp() -> str:
    return datetime.now(UTC).isoformat()


async def _job_update(redis: Redis, job_id: str, **fields: str | int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        mapping: dict[str | bytes, str | bytes | int] = {"updated_at": _stamp()}
        mapping.update(fields)
        pipe.hset(job_key(job_id), mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(job_key(job_id), JOB_TTL_S)
        await pipe.execute()


async def create_job(redis: Redis, board_id: str, window: Window | None, period: str | None) -> str:
    """Record a queued rebuild job; its id."""
    job_id = secrets.token_hex(12)
    now = _stamp()
    await _job_update(
        redis,
        job_id,
        id=job_id,
        kind="rebuild",
        board_id=board_id,
        window=window or "",
        period=period or "",
        state="queued",
        done=0,
        total=0,
        error="",
        created_at=now,
        finished_at="",
        result="",
    )
    return job_id


async def run_job(
    redis: Redis,
    pg: asyncpg.Pool,
    board: Board,
    job_id: str,
    *,
    retention: int,
    window: Window | None = None,
    period: str | None = None,
    before: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Run a rebuild job, recording its progress and outcome in its hash; `before` (e.g. a
    recompute of the board's scores from its events) runs first, as part of the job."""

    async def progress(done: int, total: int) -> None:
        await _job_update(redis, job_id, state="running", done=done, total=total)

    await _job_update(redis, job_id, state="running")
    try:
        if before is not None:
            await before()
        report = await rebuild_board(
            redis, pg, board, retention=retention, window=window, period=period, progress=progress
        )
    except Exception as exc:
        await _job_update(
            redis, job_id, state="failed", error=f"{type(exc).__name__}: {exc}",
            finished_at=_stamp(),
        )  # fmt: skip
        raise
    await _job_update(
        redis,
        job_id,
        state="done",
        done=report.rows,
        total=report.rows,
        finished_at=_stamp(),
        result=msgspec.json.encode(report).decode(),
    )


async def job_view(redis: Redis, job_id: str) -> JobView | None:
    """A job's state, or None if there is no such job (or it expired)."""
    raw = await redis.hgetall(job_key(job_id))
    if not raw:
        return None
    f = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    return JobView(
        id=f["id"],
        kind=f["kind"],
        board_id=f["board_id"],
        window=f["window"] or None,
        period=f["period"] or None,
        state=msgspec.convert(f["state"], JobState),
        done=int(f["done"]),
        total=int(f["total"]),
        error=f["error"] or None,
        created_at=datetime.fromisoformat(f["created_at"]),
        updated_at=datetime.fromisoformat(f["updated_at"]),
        finished_at=datetime.fromisoformat(f["finished_at"]) if f["finished_at"] else None,
        result=msgspec.json.decode(f["result"], type=RebuildReport) if f["result"] else None,
    )
