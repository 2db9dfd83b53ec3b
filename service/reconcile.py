"""Compare a board's sorted sets with Postgres and, on request, repair the drift.

For every set that belongs in Redis (current and retained periods with rows, and every set
key Redis actually holds for the board):

1. counts: ZCARD against the number of ranked (not banned) rows;
2. chunked checksums: both sides are streamed in chunks (a Postgres cursor, ZRANGE pages)
   and folded into per-bucket checksums (bucket = crc32(player_id)); only buckets whose
   checksums differ are looked at again;
3. the differing players of those buckets are listed (missing in Redis, extra in Redis,
   wrong score, wrong member i.e. the tie time of `earliest` boards), each re-checked
   against fresh values of both stores so that a submission landing during the comparison
   is not reported as drift.

`fix=True` repairs the listed players with a small Lua script that writes Postgres' value
when its version is at least the stored one (so a newer concurrent apply is never undone),
and removes extra members.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import keys, queries, rankcache
from service.models import Board, Window
from service.rebuild import is_temp_key, sets_of

DriftKind = Literal["missing", "extra", "wrong_score", "wrong_member"]
WINDOWS: tuple[Window, ...] = ("all", "daily", "weekly", "monthly")
CHUNK = 10_000
BUCKET_SIZE = 1_000
MAX_BUCKETS = 4_096
MAX_LISTED = 1_000  # players listed per set in a report (all are repaired)

Entry = tuple[int, str]  # stored score, member

_REPAIR_LUA = """
-- KEYS[1] set, KEYS[2] versions hash, KEYS[3] board revision counter
-- ARGV[1] expire-at in unix ms (0: never); then groups of five:
--   player, version, stored score, member, mode
-- mode 'set': write score and member when version >= the stored version
-- mode 'tomb': drop the member, keep `version|` when version >= the stored version
-- mode 'forget': drop the member and the version when the stored version <= version
-- After an argument `--stale`, members to remove whatever the versions say.
-- Returns how many players were written or removed.
local changed, touched = 0, 0
local function current_of(player)
  local current = redis.call('HGET', KEYS[2], player)
  if not current then return 0, nil end
  local sep = string.find(current, '|', 1, true)
  if sep then
    return tonumber(string.sub(current, 1, sep - 1)), string.sub(current, sep + 1)
  end
  return tonumber(current), player
end
local i = 2
while i <= #ARGV do
  if ARGV[i] == '--stale' then
    for j = i + 1, #ARGV do
      touched = touched + redis.call('ZREM', KEYS[1], ARGV[j])
    end
    break
  end
  local player, version, score, member, mode =
    ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local current_version, current_member = current_of(player)
  if mode == 'set' and version >= current_version then
    if current_member and current_member ~= '' and current_member ~= member then
      redis.call('ZREM', KEYS[1], current_member)
    end
    redis.call('ZADD', KEYS[1], score, member)
    if member == player then
      redis.call('HSET', KEYS[2], player, version)
    else
      redis.call('HSET', KEYS[2], player, version .. '|' .. member)
    end
    changed = changed + 1
  elseif (mode == 'tomb' and version >= current_version)
      or (mode == 'forget' and current_version <= version) then
    if current_member and current_member ~= '' then
      redis.call('ZREM', KEYS[1], current_member)
    end
    if mode == 'tomb' then
      redis.call('HSET', KEYS[2], player, version .. '|')
    else
      redis.call('HDEL', KEYS[2], player)
    end
    changed = changed + 1
  end
  i = i + 5
end
if changed + touched > 0 then
  redis.call('INCR', KEYS[3])
  local expire_at = tonumber(ARGV[1])
  if expire_at > 0 then
    redis.call('PEXPIREAT', KEYS[1], expire_at)
    redis.call('PEXPIREAT', KEYS[2], expire_at)
  end
end
return changed
"""


class PlayerDrift(msgspec.Struct, frozen=True):
    """One player whose entry differs between Redis and Postgres."""

    player_id: str
    kind: DriftKind
    expected: int | None  # the score in Postgres (None: no ranked row)
    actual: int | None  # the score in Redis (None: no member)


class SetDrift(msgspec.Struct, frozen=True, kw_only=True):
    """The comparison of one sorted set with its rows."""

    window: Window
    period: str
    postgres: int  # ranked rows
    redis: int  # members
    buckets: int
    differing_buckets: int
    drifted: int  # players that differ
    players: list[PlayerDrift]  # up to MAX_LISTED of them
    repaired: int = 0


class ReconcileReport(msgspec.Struct, frozen=True, kw_only=True):
    """A board's reconciliation."""

    board_id: str
    sets: list[SetDrift]
    drifted: int  # players that differ, every set together
    fixed: bool  # fix was asked and every differing player was repaired (or none differed)

    @property
    def clean(self) -> bool:
        """True when Redis matched Postgres."""
        return self.drifted == 0


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _bucket(player: str, buckets: int) -> int:
    return zlib.crc32(player.encode()) % buckets


def _digest(player: str, entry: Entry) -> int:
    data = f"{player}\x00{entry[0]}\x00{entry[1]}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _expected(board: Board, r: asyncpg.Record) -> Entry:
    reached_ms = int(r["reached_at"].timestamp() * 1000)
    return (
        keys.zscore(board.order, r["score"]),
        keys.member(board.ties, r["player_id"], reached_ms),
    )


async def _pg_entries(
    pg: asyncpg.Pool, board: Board, window: Window, period: str
) -> AsyncIterator[tuple[str, Entry]]:
    async with pg.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(queries.SET_ROWS, board.id, window, period)
        while records := await cursor.fetch(CHUNK):
            for r in records:
                if not r["banned"]:
                    yield r["player_id"], _expected(board, r)


async def _redis_entries(redis: Redis, board: Board, key: str) -> AsyncIterator[tuple[str, Entry]]:
    start = 0
    while True:
        page: list[Any] = await redis.zrange(key, start, start + CHUNK - 1, withscores=True)
        for raw, stored in page:
            member = _text(raw)
            try:
                player = keys.player_of(board.ties, member)
            except IndexError:
                player = member
            yield player, (int(stored), member)
        if len(page) < CHUNK:
            return
        start += CHUNK


def _drift(
    board: Board, player: str, expected: Entry | None, actual: Entry | None
) -> PlayerDrift | None:
    if expected == actual:
        return None
    exp = keys.real_score(board.order, expected[0]) if expected else None
    act = keys.real_score(board.order, actual[0]) if actual else None
    if actual is None:
        return PlayerDrift(player, "missing", exp, None)
    if expected is None:
        return PlayerDrift(player, "extra", None, act)
    if expected[0] != actual[0]:
        return PlayerDrift(player, "wrong_score", exp, act)
    return PlayerDrift(player, "wrong_member", exp, act)


async def _redis_entry(redis: Redis, key: str, versions: str, player: str) -> Entry | None:
    """A player's current entry in Redis: the member its versions field points at."""
    raw = await redis.hget(versions, player)
    member = player
    if raw is not None:
        text = _text(raw)
        if "|" in text:
            member = text.split("|", 1)[1]
    entry: Entry | None = None
    if member:
        stored = await redis.zscore(key, member)
        if stored is not None:
            entry = (int(stored), member)
    return entry


async def compare_set(
    redis: Redis, pg: asyncpg.Pool, board: Board, window: Window, period: str
) -> tuple[SetDrift, dict[str, tuple[Entry | None, list[str]]]]:
    """Compare one set; also answers, per differing player, Redis members to drop."""
    key = keys.set_key(board.id, window, period)
    redis_count = int(await redis.zcard(key))
    pg_count = 0
    # Pass 1: bucket checksums on both sides.
    expected_size = max(redis_count, 1)
    buckets = max(1, min(MAX_BUCKETS, expected_size // BUCKET_SIZE + 1))
    pg_sums = [0] * buckets
    redis_sums = [0] * buckets
    async for player, entry in _pg_entries(pg, board, window, period):
        pg_count += 1
        b = _bucket(player, buckets)
        pg_sums[b] = (pg_sums[b] + _digest(player, entry)) & 0xFFFFFFFFFFFFFFFF
    async for player, entry in _redis_entries(redis, board, key):
        b = _bucket(player, buckets)
        redis_sums[b] = (redis_sums[b] + _digest(player, entry)) & 0xFFFFFFFFFFFFFFFF
    bad = {b for b in range(buckets) if pg_sums[b] != redis_sums[b]}
    stale: dict[str, tuple[Entry | None, list[str]]] = {}
    players: list[PlayerDrift] = []
    if bad:
        # Pass 2: the entries of differing buckets, side by side.
        pg_side: dict[str, Entry] = {}
        redis_side: dict[str, list[Entry]] = {}
        async for player, entry in _pg_entries(pg, board, window, period):
            if _bucket(player, buckets) in bad:
                pg_side[player] = entry
        async for player, entry in _redis_entries(redis, board, key):
            if _bucket(player, buckets) in bad:
                redis_side.setdefault(player, []).append(entry)
        candidates = sorted(
            p
            for p in set(pg_side) | set(redis_side)
            if redis_side.get(p) != ([pg_side[p]] if p in pg_side else None)
        )
        # Pass 3: re-check each candidate against fresh values of both stores.
        fresh = await _fresh_pg(pg, board, window, period, candidates)
        versions = keys.versions_key(board.id, window, period)
        for player in candidates:
            actual = await _redis_entry(redis, key, versions, player)
            expected = fresh.get(player)
            members = {e[1] for e in redis_side.get(player, [])}
            if actual is not None:
                if expected is None:
                    members.add(actual[1])
                else:
                    members.discard(actual[1])
            # members of the player that must go: strays and those of unranked players
            strays = [m for m in sorted(members) if await redis.zscore(key, m) is not None]
            drift = _drift(board, player, expected, actual)
            if drift is None and strays:
                first = redis_side[player][0][0]
                drift = PlayerDrift(player, "extra", None, keys.real_score(board.order, first))
            if drift is not None:
                players.append(drift)
                stale[player] = (expected, strays)
    return (
        SetDrift(
            window=window,
            period=period,
            postgres=pg_count,
            redis=redis_count,
            buckets=buckets,
            differing_buckets=len(bad),
            drifted=len(players),
            players=players[:MAX_LISTED],
        ),
        stale,
    )


async def _fresh_pg(
    pg: asyncpg.Pool, board: Board, window: Window, period: str, players: list[str]
) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for i in range(0, len(players), CHUNK):
        records = await pg.fetch(
            queries.SET_ROWS_OF_PLAYERS, board.id, window, period, players[i : i + CHUNK]
        )
        for r in records:
            if not r["banned"]:
                out[r["player_id"]] = _expected(board, r)
    return out


def _expire_at(window: Window, period: str, retention: int) -> int:
    try:
        return rankcache.expire_at_ms(window, period, retention)
    except ValueError:  # a key whose period is no period of its window: leave its TTL alone
        return 0


async def repair(
    redis: Redis,
    pg: asyncpg.Pool,
    board: Board,
    window: Window,
    period: str,
    players: dict[str, tuple[Entry | None, list[str]]],
    retention: int,
) -> int:
    """Write Postgres' values for these players (version-guarded); players changed."""
    if not players:
        return 0
    names = list(players)
    records = {
        r["player_id"]: r
        for i in range(0, len(names), CHUNK)
        for r in await pg.fetch(
            queries.SET_ROWS_OF_PLAYERS, board.id, window, period, names[i : i + CHUNK]
        )
    }
    versions = keys.versions_key(board.id, window, period)
    argv: list[str | int] = [_expire_at(window, period, retention)]
    strays: list[str] = []
    for player, (_, stray) in players.items():
        r = records.get(player)
        if r is None:
            raw = await redis.hget(versions, player)
            seen = int(_text(raw).split("|", 1)[0]) if raw is not None else 0
            argv += [player, seen, 0, "", "forget"]
        elif r["banned"]:
            argv += [player, r["version"], 0, "", "tomb"]
        else:
            stored, member = _expected(board, r)
            argv += [player, r["version"], stored, member, "set"]
        strays += stray
    if strays:
        argv += ["--stale", *strays]
    script = redis.register_script(_REPAIR_LUA)
    result = await script(
        keys=[keys.set_key(board.id, window, period), versions, keys.revision_key(board.id)],
        args=argv,
    )
    return int(result)


async def redis_sets(redis: Redis, board_id: str) -> set[tuple[Window, str]]:
    """(window, period) of every sorted set Redis holds for the board."""
    prefix = f"lb:{{{board_id}}}:"
    found: set[tuple[Window, str]] = set()
    async for raw in redis.scan_iter(match=keys.board_pattern(board_id), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if is_temp_key(key):
            continue
        parts = key[len(prefix) :].split(":")
        if len(parts) == 2:
            window = next((w for w in WINDOWS if w == parts[0]), None)
            if window is not None:
                found.add((window, parts[1]))
    return found


async def reconcile_board(
    redis: Redis, pg: asyncpg.Pool, board: Board, *, retention: int, fix: bool = False
) -> ReconcileReport:
    """Compare every set of a board with Postgres; repair the drift when `fix`."""
    targets = {(w, p) for w, p, _ in await sets_of(pg, board, retention)}
    targets |= await redis_sets(redis, board.id)
    results: list[SetDrift] = []
    drifted = 0
    all_fixed = True
    for window, period in sorted(targets):
        found, stale = await compare_set(redis, pg, board, window, period)
        if fix and stale:
            repaired = await repair(redis, pg, board, window, period, stale, retention)
            again, _ = await compare_set(redis, pg, board, window, period)
            all_fixed = all_fixed and again.drifted == 0
            found = msgspec.structs.replace(found, repaired=repaired)
        drifted += found.drifted
        results.append(found)
    return ReconcileReport(
        board_id=board.id, sets=results, drifted=drifted, fixed=fix and all_fixed
    )
