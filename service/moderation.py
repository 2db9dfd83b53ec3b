"""Moderation: ban and unban players, remove an entry, erase a player, delete a board.

Postgres changes first (one transaction), Redis follows:

- ban bumps the version of every row of the player (and flags `players.banned`, which makes
  the consumers skip the player's later submissions) and applies a `Removal` with that new
  version: the player leaves every set, and an older in-flight write can never bring them
  back (the version guard keeps the tombstone). Unban bumps again and applies the rows.
- removing an entry, erasing a player and deleting a board delete rows, then remove the
  members *and* their versions (a later submission starts again at version 1, and GDPR
  wants no trace). A consumer that committed a write just before the delete and applies it
  to Redis just after would bring a member back; `settle()` repeats the Redis side after a
  short delay for that reason (the API runs it in the background). A rebuild whose
  snapshot predates the removal would bring the member back with its swap: removals are
  noted (digests, for an hour) in `forgotten_key`, and the rebuild removes them again.
- a ban is settled the same way (`settle_ban`): a consumer that read the flag just before
  the ban committed may write one more score after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import boards as boards_mod
from service import keys, periods, queries, rankcache
from service.models import Board, Window

SetKey = tuple[str, Window, str]  # board, window, period

_FORGET_LUA = """
-- KEYS[1] sorted set, KEYS[2] versions hash, KEYS[3] board revision counter
-- ARGV: players to remove with their versions (a later write starts again from version 1)
local removed = 0
for i = 1, #ARGV do
  local player = ARGV[i]
  local current = redis.call('HGET', KEYS[2], player)
  local member = player
  if current then
    local sep = string.find(current, '|', 1, true)
    if sep then member = string.sub(current, sep + 1) end
  end
  if member ~= '' then removed = removed + redis.call('ZREM', KEYS[1], member) end
  if member ~= player then removed = removed + redis.call('ZREM', KEYS[1], player) end
  removed = removed + redis.call('HDEL', KEYS[2], player)
end
if removed > 0 then redis.call('INCR', KEYS[3]) end
return removed
"""

DELETE_BATCH = 500
FORGOTTEN_KEEP_MS = 3_600_000  # how long removals are remembered for rebuilds to honour


def forgotten_key(board: str) -> str:
    """Per-board sorted set: digest of a removed player -> when (unix ms). A rebuild whose
    snapshot predates a removal removes the player again after its swap. Digests, not ids,
    and for an hour only: an erased player leaves no readable trace."""
    return f"lb:{{{board}}}:forgotten"


def player_digest(player_id: str) -> str:
    """What `forgotten_key` stores for a player."""
    return hashlib.blake2b(player_id.encode(), digest_size=12).hexdigest()


class BanResult(msgspec.Struct, frozen=True):
    """Answer of ban and unban."""

    player_id: Annotated[str, msgspec.Meta(examples=["player:42"])]
    banned: bool
    entries: int  # rows of the player, every board window period


class EraseResult(msgspec.Struct, frozen=True):
    """What erasing a player removed."""

    player_id: Annotated[str, msgspec.Meta(examples=["player:42"])]
    rows: int
    events: int
    redis_entries: int


class UnknownPlayer(Exception):
    """Nothing is stored about that player (or that entry)."""


async def set_banned(
    redis: Redis,
    pg: asyncpg.Pool,
    boards: Mapping[str, Board],
    player_id: str,
    banned: bool,
    retention: int,
) -> BanResult:
    """Ban (hide from every board) or unban (restore) a player."""
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(queries.SET_BANNED, player_id, banned)
        rows = rankcache.rows_from_records(await conn.fetch(queries.BUMP_PLAYER_ROWS, player_id))
    known = [r for r in rows if r.board_id in boards]
    changes: list[rankcache.ScoreRow | rankcache.Removal] = []
    for r in known:
        if banned:
            changes.append(
                rankcache.Removal(r.board_id, r.window, r.period, r.player_id, r.version)
            )
        else:
            changes.append(r)
    await rankcache.apply_rows(redis, rankcache.apply_script(redis), boards, changes, retention)
    return BanResult(player_id=player_id, banned=banned, entries=len(rows))


async def forget(
    redis: Redis,
    targets: Mapping[SetKey, Iterable[str]],
    names: Mapping[str, Iterable[str]],
    *,
    remember: bool = True,
) -> int:
    """Remove players (members and versions) from sets and their names from boards; with
    `remember`, note the removal for rebuilds running meanwhile (`forgotten_key`)."""
    script = redis.register_script(_FORGET_LUA)
    scripts = 0
    now_ms = int(time.time() * 1000)
    by_board: dict[str, set[str]] = defaultdict(set)
    for (board_id, _, _), players in targets.items():
        by_board[board_id].update(players)
    async with redis.pipeline(transaction=False) as pipe:
        for (board_id, window, period), players in targets.items():
            listed = sorted(set(players))
            for i in range(0, len(listed), DELETE_BATCH):
                await script(
                    keys=[
                        keys.set_key(board_id, window, period),
                        keys.versions_key(board_id, window, period),
                        keys.revision_key(board_id),
                    ],
                    args=listed[i : i + DELETE_BATCH],
                    client=pipe,
                )
                scripts += 1
        for board_id, players in names.items():
            by_board[board_id].update(players)
            listed = sorted(set(players))
            if listed:
                pipe.hdel(keys.names_key(board_id), *listed)
        for board_id, removed in by_board.items():
            if removed and remember:
                key = forgotten_key(board_id)
                pipe.zadd(key, {player_digest(p): now_ms for p in removed})
                pipe.zremrangebyscore(key, "-inf", now_ms - FORGOTTEN_KEEP_MS)
                pipe.pexpire(key, FORGOTTEN_KEEP_MS)
        results = await pipe.execute()
    return sum(int(n) for n in results[:scripts])


def _current_sets(boards: Iterable[Board]) -> list[SetKey]:
    now = datetime.now(UTC)
    return [(b.id, w, periods.period_id(w, now)) for b in boards for w in b.windows]


async def remove_entry(
    redis: Redis, pg: asyncpg.Pool, board: Board, player_id: str
) -> dict[SetKey, list[str]]:
    """Delete a player's rows of one board and their members; UnknownPlayer if none."""
    records = await pg.fetch(queries.DELETE_PLAYER_BOARD_ROWS, board.id, player_id)
    if not records:
        raise UnknownPlayer(player_id)
    targets = _targets(records)
    for key in _current_sets([board]):
        targets.setdefault(key, []).append(player_id)
    await forget(redis, targets, {board.id: [player_id]})
    return targets


def _targets(records: Iterable[asyncpg.Record]) -> dict[SetKey, list[str]]:
    targets: dict[SetKey, list[str]] = defaultdict(list)
    for r in records:
        targets[(r["board_id"], r["window_name"], r["period"])].append(r["player_id"])
    return dict(targets)


async def erase_player(
    redis: Redis, pg: asyncpg.Pool, boards: Mapping[str, Board], player_id: str
) -> tuple[EraseResult, dict[SetKey, list[str]]]:
    """Erase everything stored about a player (GDPR); UnknownPlayer if there is nothing."""
    async with pg.acquire() as conn, conn.transaction():
        existed = await conn.fetchval(queries.PLAYER_EXISTS, player_id)
        records = await conn.fetch(queries.DELETE_PLAYER_ROWS, player_id)
        status = await conn.execute(queries.DELETE_PLAYER_EVENTS, player_id)
        await conn.execute(queries.DELETE_PLAYER, player_id)
    events = int(status.split()[-1])
    targets = _targets(records)
    for key in _current_sets(boards.values()):
        targets.setdefault(key, []).append(player_id)
    removed = await forget(redis, targets, {b: [player_id] for b in boards})
    if not existed and removed == 0:
        raise UnknownPlayer(player_id)
    result = EraseResult(
        player_id=player_id, rows=len(records), events=events, redis_entries=removed
    )
    return result, targets


async def delete_board_keys(redis: Redis, board_id: str) -> int:
    """UNLINK every Redis key of a board; how many there were."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.board_pattern(board_id), count=1000):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += int(await redis.unlink(*batch))
            batch = []
    if batch:
        deleted += int(await redis.unlink(*batch))
    return deleted


async def delete_board(redis: Redis, pg: asyncpg.Pool, board_id: str) -> int:
    """Delete a board with all its rows, events and Redis keys; UnknownBoard if none."""
    async with pg.acquire() as conn, conn.transaction():
        # The board row first: this waits for the consumers' transactions that hold it
        # (queries.LOCK_BOARDS), so the deletes below see their rows, and every writer that
        # comes later finds the board gone. player_scores has no cascading foreign key.
        found = await conn.fetchval(queries.DELETE_BOARD, board_id)
        if found is None:
            raise boards_mod.UnknownBoard(board_id)
        await conn.execute(queries.DELETE_BOARD_ROWS, board_id)
        await conn.execute(queries.DELETE_BOARD_EVENT_IDS, board_id)
        await conn.execute(queries.DELETE_BOARD_EVENTS, board_id)
    return await delete_board_keys(redis, board_id)


async def settle(
    redis: Redis, pg: asyncpg.Pool, targets: Mapping[SetKey, Iterable[str]], delay_s: float
) -> int:
    """After `delay_s`, remove again the players that still have no row in those sets (a
    write in flight during the delete may have re-added them); how many were removed."""
    await asyncio.sleep(delay_s)
    again: dict[SetKey, list[str]] = {}
    for (board_id, window, period), players in targets.items():
        listed = sorted(set(players))
        present = {
            r["player_id"]
            for r in await pg.fetch(queries.SET_ROWS_OF_PLAYERS, board_id, window, period, listed)
        }
        rest = [p for p in listed if p not in present]
        if rest:
            again[(board_id, window, period)] = rest
    return await forget(redis, again, {}, remember=False) if again else 0


async def settle_board(redis: Redis, pg: asyncpg.Pool, board_id: str, delay_s: float) -> int:
    """After `delay_s`, delete a deleted board's keys again (late writes of consumers whose
    board cache still knew it)."""
    await asyncio.sleep(delay_s)
    if await pg.fetchval(queries.SELECT_BOARD, board_id) is not None:
        return 0  # created again meanwhile
    return await delete_board_keys(redis, board_id)


async def settle_ban(
    redis: Redis,
    pg: asyncpg.Pool,
    boards: Mapping[str, Board],
    player_id: str,
    retention: int,
    delay_s: float,
) -> bool:
    """After `delay_s`, ban again if the player is still banned: a consumer that checked the
    flag just before the ban committed may have written one more score after it."""
    await asyncio.sleep(delay_s)
    if not await pg.fetchval(queries.IS_BANNED, player_id):
        return False
    await set_banned(redis, pg, boards, player_id, True, retention)
    return True
