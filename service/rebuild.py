"""Zero-downtime rebuild of sorted sets from Postgres `player_scores`.

One set (board, window, period) is rebuilt like this:

1. A REPEATABLE READ transaction fixes a snapshot and a time `since` no later than the
   start of any transaction still running (so every row committed after the snapshot has
   `updated_at >= since`).
2. The snapshot's rows stream in chunks, as COPY text whose columns Postgres has formatted
   as Redis protocol arguments, into a temporary set and its versions hash
   (`<set>:rebuild:<token>`, same hash tag) and the board's names hash, in large pipelined
   commands. Two connections read the one snapshot side by side (the second one imports
   it): the members best-last, so that Redis inserts every member at the head of the
   skiplist, and the versions, then the names, in no order, which Redis can take while
   Postgres starts the sorted stream.
   Banned players get a tombstone version (`version|`), no member and no name.
   Names are per board, not per set: a rebuild writes them only when it is told to (a
   cold start) or when the board has no names hash at all. A rebuild over a board whose
   names are there leaves them as the consumers keep them, which saves a third of the
   rebuild's Redis writes (1M names of a 1M-player set: ~1.3 s of Redis CPU).
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import background, keys, moderation, periods, queries, rankcache, resp
from service.models import Board, Window

Progress = Callable[[int, int], Awaitable[None]]
"""Called with (rows done, rows in total) after every chunk."""

CHUNK_ROWS = 50_000  # rows per chunk, and so members per ZADD / fields per HSET
# Not one command per key: Redis sizes a new set's or hash's table for the command that
# creates it, so sending each stream whole spares the tables' rehashing as they grow (at
# 1M players 0.55-1.5 s less Redis CPU, measured). But Redis then waits ~2 s for whole
# streams before it starts, and each command holds every other client up for as long as
# 1.3 s: the rebuild took 4.6-6.1 s instead of 3.8-5.2 s.
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


# COPY text escapes (what Postgres writes for a backslash and control characters).
_COPY_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_COPY_UNESCAPED = {
    b"\\": b"\\", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v",
}  # fmt: skip


def _unescape(field: bytes) -> bytes:
    return _COPY_ESCAPE.sub(lambda m: _COPY_UNESCAPED[m.group(1)], field)


def _bulk_command(name: bytes, key: bytes, rows: list[bytes]) -> bytes:
    """One command of COPY text rows of queries' _RESP_COLUMNS (two arguments a row, each
    after its `$<length>` header): tabs and newlines become the protocol's CRLF. A chunk
    with a backslash in it holds COPY escapes (a display name with a tab, say): its rows
    are split and unescaped field by field instead."""
    joined = b"\t".join(rows)
    if b"\\" in joined:
        fields = [_unescape(f) for row in rows for f in row.split(b"\t")]
        body = b"\r\n".join(fields)
    else:
        body = joined.replace(b"\t", b"\r\n")
    head = b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        2 * len(rows) + 2, len(name), name, len(key), key,
    )  # fmt: skip
    return head + body + b"\r\n"


def _temp_commands(name: bytes, temp: str, rows: list[bytes]) -> list[bytes]:
    """A chunk's command into a temporary key, and the temporary key's TTL."""
    key = temp.encode()
    ttl = str(TEMP_TTL_MS).encode()
    return [_bulk_command(name, key, rows), resp.command(b"PEXPIRE", key, ttl)]


COPY_TIMEOUT_S = TEMP_TTL_MS / 1000  # a COPY outliving the temporary keys has failed anyway


async def _stream(
    conn: asyncpg.Connection,
    query: str,
    args: tuple[Any, ...],
    chunk_rows: int,
    redis: Redis,
    commands_of: Callable[[list[bytes]], list[bytes]],
    after_chunk: Callable[[int], Awaitable[None]],
) -> None:
    """Send a query's rows (COPY text) to Redis in chunks of `chunk_rows` rows, as
    `commands_of` encodes them; Postgres produces the next rows while Redis takes a chunk
    (asyncpg stops reading from Postgres while the chunk before is still in Redis).
    `after_chunk` gets each chunk's size."""
    tail = b""
    rows: list[bytes] = []
    sending: asyncio.Task[list[Any]] | None = None

    async def send(chunk: list[bytes]) -> None:
        nonlocal sending
        commands = commands_of(chunk)
        if sending is not None:
            await sending
        sending = asyncio.create_task(resp.send(redis, commands))
        await after_chunk(len(chunk))

    async def sink(data: bytes) -> None:
        nonlocal tail, rows
        data = tail + data
        end = data.rfind(b"\n")
        if end < 0:
            tail = data
            return
        tail = data[end + 1 :]
        rows += data[:end].split(b"\n")
        while len(rows) >= chunk_rows:
            chunk, rows = rows[:chunk_rows], rows[chunk_rows:]
            await send(chunk)

    try:
        await conn.copy_from_query(query, *args, output=sink, timeout=COPY_TIMEOUT_S)
        if tail:
            raise RuntimeError("COPY output ended inside a row")
        if rows:
            await send(rows)
        if sending is not None:
            await sending
    except BaseException:
        await background.cancel_and_wait(sending)
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


Stream = Callable[[asyncpg.Connection], Awaitable[None]]


def _lanes(streams: list[Stream], connections: int) -> list[list[Stream]]:
    """The streams spread over at most `connections` connections: the sorted members alone
    on the first (the longest stream, and Postgres needs a moment to start it), the others
    each on a connection of its own while the pool allows, else one after the other on the
    last one."""
    lanes: list[list[Stream]] = [[s] for s in streams[: max(connections, 1)]]
    lanes[-1].extend(streams[len(lanes) :])
    return lanes


async def _one_after_another(conn: asyncpg.Connection, lane: list[Stream]) -> None:
    for stream in lane:
        await stream(conn)


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
    names: bool = True,
) -> SetRebuilt:
    """Rebuild one set from Postgres with no downtime; see the module docstring. With
    `names`, the display names of its players go into the board's names hash too."""
    started = time.monotonic()
    token = secrets.token_hex(8)
    temp_set = temp_key(board.id, window, period, token)
    temp_versions = temp_set + ":v"
    names_key = keys.names_key(board.id).encode()
    rows = ranked = 0
    try:
        async with (
            pg.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            since: datetime = await conn.fetchval(queries.REBUILD_SNAPSHOT_TIME)
            await conn.execute(queries.REBUILD_WORK_MEM)
            total = done_before if total_hint is None else total_hint
            if progress is not None and total_hint is None:  # a count costs ~0.1 s a 1M rows
                total += await conn.fetchval(queries.COUNT_SET_ROWS, board.id, window, period)
            snapshot: str = await conn.fetchval(queries.EXPORT_SNAPSHOT)
            args = (board.id, window, period)

            async def members_sent(n: int) -> None:
                nonlocal ranked
                ranked += n

            async def names_sent(n: int) -> None:
                pass

            async def fields_sent(n: int) -> None:
                nonlocal rows
                rows += n
                if progress is not None:
                    await progress(done_before + rows, max(total, done_before + rows))

            async def members(on: asyncpg.Connection) -> None:
                await _stream(
                    on,
                    queries.SET_MEMBERS_IN_INSERT_ORDER[(board.order, board.ties)],
                    args,
                    chunk_rows,
                    redis,
                    lambda rows: _temp_commands(b"ZADD", temp_set, rows),
                    members_sent,
                )

            async def versions(on: asyncpg.Connection) -> None:
                await _stream(
                    on,
                    queries.SET_VERSIONS[board.ties],
                    args,
                    chunk_rows,
                    redis,
                    lambda rows: _temp_commands(b"HSET", temp_versions, rows),
                    fields_sent,
                )

            async def display_names(on: asyncpg.Connection) -> None:
                await on.execute(queries.NAMES_JOIN_PLAN)  # last in its transaction
                await _stream(
                    on,
                    queries.SET_NAMES,
                    args,
                    chunk_rows,
                    redis,
                    lambda rows: [_bulk_command(b"HSET", names_key, rows)],
                    names_sent,
                )

            streams: list[Stream] = [members, versions]
            if names:
                streams.append(display_names)
            lanes = _lanes(streams, pg.get_max_size())
            async with contextlib.AsyncExitStack() as more:
                # the other lanes read the same snapshot on connections of their own
                connections = [conn] + [
                    await more.enter_async_context(_in_snapshot(pg, snapshot)) for _ in lanes[1:]
                ]
                async with asyncio.TaskGroup() as running:
                    for on, lane in zip(connections, lanes, strict=True):
                        running.create_task(_one_after_another(on, lane))
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
    pg: asyncpg.Pool | asyncpg.Connection, board: Board, retention: int, *, count: bool = True
) -> list[tuple[Window, str, int]]:
    """(window, period, rows) of every set of the board that belongs in Redis: its windows'
    current periods and the retained past periods that have rows (rows 0 unless `count`)."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    found: dict[tuple[Window, str], int] = {
        (w, periods.period_id(w, now)): 0 for w in board.windows
    }
    query = queries.BOARD_SETS if count else queries.BOARD_SET_IDS
    for r in await pg.fetch(query, board.id):
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
    names: bool | None = None,
) -> RebuildReport:
    """Rebuild every set of a board (or those of one window, or one window period).

    `names`: write the players' display names too; None (the default) writes them when the
    board has no names hash, decided once for every set of the call (a second set must not
    skip names because the first one has just written some)."""
    started = time.monotonic()
    if names is None:
        names = not await redis.exists(keys.names_key(board.id))
    if window is not None and period is not None:
        targets = [(window, period)]
    else:
        targets = [
            (w, p)
            for w, p, _ in await sets_of(pg, board, retention, count=False)
            if window is None or w == window
        ]
    # Progress needs the rows in total; counting them takes ~0.1 s a 1M rows, so it runs
    # beside the rebuild (on a connection of its own) instead of before it.
    counting = asyncio.create_task(_count(pg, board, targets)) if progress else None

    async def report(done: int, _: int) -> None:
        assert progress is not None
        total = done
        if counting is not None and counting.done() and counting.exception() is None:
            total = max(counting.result(), done)
        await progress(done, total)

    done = 0
    sets: list[SetRebuilt] = []
    try:
        for w, p in targets:
            result = await rebuild_set(
                redis,
                pg,
                board,
                w,
                p,
                retention=retention,
                progress=report if progress else None,
                chunk_rows=chunk_rows,
                done_before=done,
                total_hint=0,
                names=names,
            )
            sets.append(result)
            done += result.rows
    finally:
        await background.cancel_and_wait(counting)
    return RebuildReport(
        board_id=board.id,
        sets=sets,
        rows=done,
        seconds=round(time.monotonic() - started, 3),
    )


async def _count(pg: asyncpg.Pool, board: Board, targets: list[tuple[Window, str]]) -> int:
    """The rows of some sets of a board."""
    total = 0
    for window, period in targets:
        total += await pg.fetchval(queries.COUNT_SET_ROWS, board.id, window, period)
    return total
