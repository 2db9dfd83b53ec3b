"""Read side of the ranking cache: top pages, a player's rank, around-me and friends boards.

Domain only (no HTTP). Every read is one Redis round trip: a read-only Lua script reads the
sorted set, the display names and the board's revision counter together, so a page, its
ranks and the revision that feeds the ETag always describe the same instant.

Ranks (DESIGN.md): `shared` boards give competition ranks, 1 + the number of strictly better
scores (ZCOUNT with an exclusive bound on the stored score), and list a tie in player_id
order, which is already the member order; `earliest` boards give ZRANK + 1.

A missing set (ZCARD 0: Redis never keeps an empty sorted set) raises `SetMissing`; the
caller decides between an empty answer and Postgres (`service.pgranking`). So does any set
of a board whose cold-start marker is not `done:` (service.coldstart), with no revision, so
that the caller goes to Postgres: after Redis lost a board, consumers' writes recreate
partial sets until the recovery has rebuilt them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from service import keys
from service.models import (
    AroundPage,
    Board,
    PlayerRank,
    RankedEntry,
    RanksPage,
    TopPage,
    Window,
)
from service.wire import ReadLink

_READ_LUA = r"""#!lua flags=no-writes
-- KEYS[1] sorted set, KEYS[2] versions hash, KEYS[3] names hash, KEYS[4] revision counter,
-- KEYS[5] the board's warm marker
-- ARGV[1] ties ('shared' | 'earliest'), ARGV[2] op, then the op's arguments:
--   range  start count          entries at positions [start, start + count)
--   after  score member count   entries after the exclusive position (score, member)
--   around player radius        `radius` entries either side of the player
--   ranks  player...            the rank of each player
-- Reply: {revision or false, total, ...}; total 0 means the set does not exist.
--   range, after, around: first position, rank of the first entry, then member, stored
--     score, display name per entry (around: first position -1 when the player is unranked)
--   ranks: player, rank or false, stored score or false, display name per player
local set, versions, names = KEYS[1], KEYS[2], KEYS[3]
local earliest = ARGV[1] == 'earliest'
local op = ARGV[2]
-- A board not (yet) marked complete by a cold-start pass may hold partial sets rebuilt by
-- consumers' writes: answered as missing with no revision, which sends the read to Postgres.
local warm = redis.call('GET', KEYS[5])
if not warm or string.sub(warm, 1, 5) ~= 'done:' then
  return {false, 0}
end
local revision = redis.call('GET', KEYS[4])
local total = redis.call('ZCARD', set)
if total == 0 then
  return {revision, 0}
end

local function member_of(player)
  if not earliest then return player end
  local v = redis.call('HGET', versions, player)
  if not v then return nil end
  local sep = string.find(v, '|', 1, true)
  if not sep or sep == #v then return nil end
  return string.sub(v, sep + 1)
end

-- The friends board and a player's rank first: they need none of the page functions
-- below, and defining a function costs each call of the script.
if op == 'ranks' then
  local out = {revision, total}
  for i = 3, #ARGV do
    local player = ARGV[i]
    local member = member_of(player)
    local score = member and redis.call('ZSCORE', set, member)
    out[#out + 1] = player
    if score then
      local rank
      if earliest then
        rank = redis.call('ZRANK', set, member) + 1
      else
        rank = redis.call('ZCOUNT', set, '-inf', '(' .. score) + 1
      end
      out[#out + 1] = rank
      out[#out + 1] = score
      out[#out + 1] = redis.call('HGET', names, player)
    else
      out[#out + 1] = false
      out[#out + 1] = false
      out[#out + 1] = false
    end
  end
  return out
end

local function player_of(member)
  if not earliest then return member end
  local sep = string.find(member, '|', 1, true)
  return string.sub(member, sep + 1)
end

local function rank_at(pos, score)
  if earliest then return pos + 1 end
  return redis.call('ZCOUNT', set, '-inf', '(' .. score) + 1
end

local function page(start, stop)
  local out = {revision, total}
  if start < 0 then start = 0 end
  if stop >= total then stop = total - 1 end
  if start > stop then
    out[3] = start
    out[4] = 0
    return out
  end
  local items = redis.call('ZRANGE', set, start, stop, 'WITHSCORES')
  out[3] = start
  out[4] = rank_at(start, items[2])
  -- every name in one call: each redis.call costs more than the lookup itself
  local players = {}
  for i = 1, #items, 2 do
    players[#players + 1] = player_of(items[i])
  end
  local found = redis.call('HMGET', names, unpack(players))
  for i = 1, #items, 2 do
    out[#out + 1] = items[i]
    out[#out + 1] = items[i + 1]
    out[#out + 1] = found[(i + 1) / 2]
  end
  return out
end

if op == 'range' then
  local start = tonumber(ARGV[3])
  return page(start, start + tonumber(ARGV[4]) - 1)
elseif op == 'after' then
  local score, member = ARGV[3], ARGV[4]
  local pos
  local current = redis.call('ZSCORE', set, member)
  if current and tonumber(current) == tonumber(score) then
    pos = redis.call('ZRANK', set, member) + 1
  else
    -- bytewise a < b (Lua's own < follows the server's collation locale)
    local function less(a, b)
      local n = math.min(#a, #b)
      for i = 1, n do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y end
      end
      return #a < #b
    end
    -- the member moved or left: first position of the tie group that sorts after it
    local lo = redis.call('ZCOUNT', set, '-inf', '(' .. score)
    local hi = redis.call('ZCOUNT', set, '-inf', score)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local at = redis.call('ZRANGE', set, mid, mid)[1]
      if less(member, at) then hi = mid else lo = mid + 1 end
    end
    pos = lo
  end
  return page(pos, pos + tonumber(ARGV[5]) - 1)
elseif op == 'around' then
  local member = member_of(ARGV[3])
  local pos = member and redis.call('ZRANK', set, member)
  if not pos then
    return {revision, total, -1, 0}
  end
  local radius = tonumber(ARGV[4])
  return page(pos - radius, pos + radius)
end
return redis.error_reply('unknown op ' .. tostring(op))
"""
_READ_SHA = hashlib.sha1(_READ_LUA.encode()).hexdigest()

CURSOR_VERSION = 1
Reader = Redis | ReadLink  # a redis-py client, or the API's lean link (same replies)


class SetMissing(Exception):
    """The sorted set is not in Redis; `revision` is the board's counter (None: no key)."""

    def __init__(self, revision: int | None) -> None:
        super().__init__("sorted set missing")
        self.revision = revision


class BadCursor(ValueError):
    """A cursor that this service did not make."""


@dataclass
class ReadMeta:
    """Filled by a read: the board's revision counter when the answer was read."""

    revision: int | None = None


# --- cursors --------------------------------------------------------------------------------


def encode_cursor(stored: int, member: str) -> str:
    """An opaque cursor: the (stored score, member) position of a page's last entry."""
    raw = msgspec.msgpack.encode((CURSOR_VERSION, stored, member))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (stored score, member) of a cursor; BadCursor when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, stored, member = msgspec.msgpack.decode(raw, type=tuple[int, int, str])
    except (ValueError, msgspec.DecodeError):
        raise BadCursor("not a cursor of this service") from None
    if version != CURSOR_VERSION or not member or abs(stored) > 2**53 - 1:
        raise BadCursor("not a cursor of this service")
    return stored, member


# --- shared helpers -------------------------------------------------------------------------


def percentile(rank: int, total: int) -> float:
    """Share of ranked players (%) whose rank is the same as or worse than `rank`."""
    if total <= 0:
        return 0.0
    return round(100.0 * (total - rank + 1) / total, 2)


def ranked_entries(
    board: Board,
    rows: Sequence[tuple[int, str, str | None]],
    first_pos: int,
    first_rank: int,
) -> list[RankedEntry]:
    """Entries of consecutive positions from (stored score, member, name) rows.

    Only the first entry's rank needs a count: a later entry whose score differs from the
    one before it is the first of its tie group, so its rank is its position + 1.
    """
    entries: list[RankedEntry] = []
    rank = first_rank
    previous: int | None = None
    ties, order = board.ties, board.order
    earliest = ties == "earliest"
    position = first_pos
    for stored, member, name in rows:
        if previous is not None and (earliest or stored != previous):
            rank = position + 1
        previous = stored
        position += 1
        entries.append(
            RankedEntry(
                rank=rank,
                player_id=keys.player_of(ties, member),
                score=keys.real_score(order, stored),
                display_name=name,
            )
        )
    return entries


def _text(value: Any) -> str:
    return value.decode() if type(value) is bytes else str(value)


def _stored(value: Any) -> int:
    """A stored score as Redis replies it: an integer, or a double's text past 2^53."""
    try:
        return int(value)
    except ValueError:
        return int(float(_text(value)))


def _name(value: Any) -> str | None:
    return None if value is None else _text(value)


async def _run(redis: Reader, board: Board, window: Window, period: str, args: list[Any]) -> Any:
    key_args = [
        keys.set_key(board.id, window, period),
        keys.versions_key(board.id, window, period),
        keys.names_key(board.id),
        keys.revision_key(board.id),
        keys.warm_key(board.id),
    ]
    argv = [board.ties, *args]
    try:
        return await redis.evalsha(_READ_SHA, len(key_args), *key_args, *argv)
    except NoScriptError:
        return await redis.eval(_READ_LUA, len(key_args), *key_args, *argv)


def _head(reply: list[Any], meta: ReadMeta | None) -> int:
    """The total of a reply; records the revision; SetMissing when the set is absent."""
    revision = None if reply[0] is None else int(reply[0])
    if meta is not None:
        meta.revision = revision
    total = int(reply[1])
    if total == 0:
        raise SetMissing(revision)
    return total


def _page_rows(reply: list[Any]) -> list[tuple[int, str, str | None]]:
    rest = reply[4:]
    return [
        (_stored(score), _text(member), None if name is None else _text(name))
        for member, score, name in zip(rest[0::3], rest[1::3], rest[2::3], strict=True)
    ]


# --- reads ----------------------------------------------------------------------------------


async def top(
    redis: Reader,
    board: Board,
    window: Window,
    period: str,
    limit: int,
    offset: int = 0,
    cursor: str | None = None,
    *,
    meta: ReadMeta | None = None,
) -> TopPage:
    """A page of the ranking from `offset`, or after the position in `cursor`."""
    if cursor is not None:
        stored, member = decode_cursor(cursor)
        args: list[Any] = ["after", stored, member, limit]
    else:
        args = ["range", offset, limit]
    reply = await _run(redis, board, window, period, args)
    total = _head(reply, meta)
    first_pos, first_rank = int(reply[2]), int(reply[3])
    rows = _page_rows(reply)
    next_cursor = None
    if rows and first_pos + len(rows) < total:
        next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
    return TopPage(
        window=window,
        period=period,
        total=total,
        entries=ranked_entries(board, rows, first_pos, first_rank),
        next_cursor=next_cursor,
    )


async def around(
    redis: Reader,
    board: Board,
    window: Window,
    period: str,
    player_id: str,
    radius: int,
    *,
    meta: ReadMeta | None = None,
) -> AroundPage | None:
    """The player and up to `radius` entries either side (clipped at the ends); None when
    the player is unranked."""
    reply = await _run(redis, board, window, period, ["around", player_id, radius])
    total = _head(reply, meta)
    first_pos = int(reply[2])
    if first_pos < 0:
        return None
    return AroundPage(
        player_id=player_id,
        window=window,
        period=period,
        total=total,
        entries=ranked_entries(board, _page_rows(reply), first_pos, int(reply[3])),
    )


async def ranks_of(
    redis: Reader,
    board: Board,
    window: Window,
    period: str,
    player_ids: Sequence[str],
    *,
    meta: ReadMeta | None = None,
) -> RanksPage:
    """Ranks of the given players (a friends board), best first; the unranked in `missing`."""
    unique = list(dict.fromkeys(player_ids))
    reply = await _run(redis, board, window, period, ["ranks", *unique])
    total = _head(reply, meta)
    entries: list[RankedEntry] = []
    missing: list[str] = []
    rest = reply[2:]
    for i in range(0, len(rest), 4):
        player = _text(rest[i])
        if rest[i + 1] is None:
            missing.append(player)
            continue
        entries.append(
            RankedEntry(
                rank=int(rest[i + 1]),
                player_id=player,
                score=keys.real_score(board.order, _stored(rest[i + 2])),
                display_name=_name(rest[i + 3]),
            )
        )
    return ranks_page(board, window, period, total, entries, missing)


def ranks_page(
    board: Board,
    window: Window,
    period: str,
    total: int,
    entries: list[RankedEntry],
    missing: list[str],
) -> RanksPage:
    """A friends board in list order: by rank, a tie by player_id (as the sorted set)."""
    entries.sort(key=lambda e: (e.rank, e.player_id.encode()))
    return RanksPage(window=window, period=period, total=total, entries=entries, missing=missing)


async def player_rank(
    redis: Reader,
    board: Board,
    window: Window,
    period: str,
    player_id: str,
    *,
    strict: bool = False,
    meta: ReadMeta | None = None,
) -> PlayerRank | None:
    """The player's rank, score, the set's size and percentile; None when unranked.

    A missing set means unranked too, unless `strict`: then it raises SetMissing so the
    caller can ask Postgres instead.
    """
    reply = await _run(redis, board, window, period, ["ranks", player_id])
    try:
        total = _head(reply, meta)
    except SetMissing:
        if strict:
            raise
        return None
    if reply[3] is None:
        return None
    rank = int(reply[3])
    return PlayerRank(
        player_id=player_id,
        window=window,
        period=period,
        rank=rank,
        score=keys.real_score(board.order, _stored(reply[4])),
        total=total,
        percentile=percentile(rank, total),
        display_name=_name(reply[5]),
    )
