"""The read side of `service.ranking`, answered from Postgres `player_scores`.

Used for past periods that left Redis and whenever Redis is unavailable or a set is
missing. Answers are identical to the Redis ones: rows come in the sorted set's order
(stored score, then member bytewise), cursors are the same (stored score, member)
positions, and ranks follow from counts as the Redis script's do: a page's first entry
gets 1 + the rows with a better score (`shared` ties) or its position + 1 (`earliest`),
and `service.ranking.ranked_entries` ranks the rest of the page from it.

Every statement is index-driven (service/queries.py, `PG_RANKING`): a page reads its own
rows, and counts read index entries of the set once, so a read costs one pass over the
set's index at most instead of ranking every row with window functions. A read's
statements run in one snapshot, as the Redis script's calls see one instant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg

from service import keys, queries
from service.models import (
    AroundPage,
    Board,
    PlayerRank,
    RankedEntry,
    RanksPage,
    TopPage,
    Window,
)
from service.ranking import (
    decode_cursor,
    encode_cursor,
    percentile,
    ranked_entries,
    ranks_page,
)

Pg: TypeAlias = asyncpg.Pool | asyncpg.Connection
Row: TypeAlias = tuple[int, str, str | None]  # stored score, member, display name
Point: TypeAlias = tuple[int, str]  # stored score, member: a position in the set's order


@asynccontextmanager
async def _snapshot(pg: Pg) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose statements see one snapshot (a read-only REPEATABLE READ
    transaction, or the caller's transaction), so a page and its counts agree."""
    if isinstance(pg, asyncpg.Pool):
        async with (
            pg.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn
    elif pg.is_in_transaction():
        yield pg
    else:
        async with pg.transaction(isolation="repeatable_read", readonly=True):
            yield pg


def _rows(records: list[asyncpg.Record]) -> list[Row]:
    return [(int(r["stored"]), r["member"], r["display_name"]) for r in records]


class _SetReader:
    """The statements of one read of one (board, window, period) set."""

    def __init__(self, conn: asyncpg.Connection, board: Board, window: Window, period: str):
        self.conn = conn
        self.board = board
        self.set = (board.id, window, period)
        self.sql = queries.PG_RANKING[(board.order, board.ties)]
        self.banned: list[Point] = []

    async def load_banned(self) -> None:
        """The set's rows of banned players (usually none), which counts leave out."""
        records = await self.conn.fetch(self.sql.banned_rows, *self.set)
        self.banned = [(int(r["stored"]), r["member"]) for r in records]

    def _score(self, stored: int) -> int:
        return keys.real_score(self.board.order, stored)

    async def score_at(self, offset: int) -> int | None:
        """The stored score at position `offset`; None past the last ranked row."""
        score = await self.conn.fetchval(self.sql.score_at, *self.set, offset)
        return None if score is None else keys.zscore(self.board.order, int(score))

    async def page_from(self, stored: int, skip: int, limit: int) -> list[Row]:
        """Up to `limit` ranked rows from the `skip`th of those not better than `stored`."""
        sql = self.sql.page_from
        return _rows(await self.conn.fetch(sql, *self.set, self._score(stored), skip, limit))

    async def page_after(self, point: Point, limit: int) -> list[Row]:
        """Up to `limit` ranked rows after the exclusive position `point`."""
        return await self._beside(self.sql.page_after, point, limit)

    async def page_before(self, point: Point, limit: int) -> list[Row]:
        """Up to `limit` ranked rows just before the exclusive position `point`, in order."""
        return await self._beside(self.sql.page_before, point, limit)

    async def _beside(self, sql: str, point: Point, limit: int) -> list[Row]:
        if limit <= 0:
            return []
        stored, member = point
        return _rows(await self.conn.fetch(sql, *self.set, self._score(stored), member, limit))

    async def rows_of(self, player_ids: Sequence[str]) -> list[Row]:
        """The ranked rows of these players (banned and absent ones have none)."""
        return _rows(await self.conn.fetch(self.sql.rows_of, *self.set, list(player_ids)))

    async def better_than(self, values: Sequence[int]) -> tuple[int, dict[int, int]]:
        """The set's total, and the ranked rows with a better stored score than each value:
        one pass over the set's index entries, however many values."""
        order = self.board.order
        ordered = sorted(set(values))
        bounds = [self._score(v) for v in ordered] + [queries.WORST_SCORE[order]]
        records = await self.conn.fetch(self.sql.better_counts, *self.set, bounds)
        buckets = [int(n) for (n,) in records]
        better: dict[int, int] = {}
        running = 0
        for value, n in zip(ordered, buckets, strict=False):
            running += n
            better[value] = running - sum(1 for s, _ in self.banned if s < value)
        return sum(buckets) - len(self.banned), better

    async def tied_before(self, points: Sequence[Point]) -> list[int]:
        """Ranked rows of each point's stored score whose member sorts before its member."""
        if not points:
            return []
        records = await self.conn.fetch(
            self.sql.tied_before,
            *self.set,
            [self._score(s) for s, _ in points],
            [m for _, m in points],
        )
        # Python compares str by code point: the bytewise order of their UTF-8.
        return [
            int(n) - sum(1 for s, m in self.banned if s == point[0] and m < point[1])
            for (n,), point in zip(records, points, strict=True)
        ]

    async def place(
        self, points: Sequence[Point], *, positions: bool = True
    ) -> tuple[int, list[tuple[int, int]]]:
        """The set's total, and (position, rank) of each ranked point.

        Rank: 1 + the rows with a better stored score (`shared`) or position + 1
        (`earliest`). A position also counts the point's tie group up to its member; without
        `positions` (enough for `shared` ranks) it is not counted and reads as -1.
        """
        total, better = await self.better_than([stored for stored, _ in points])
        if self.board.ties == "shared" and not positions:
            return total, [(-1, self.rank(better[stored], -1)) for stored, _ in points]
        tied = await self.tied_before(points)
        placed = []
        for (stored, _), before in zip(points, tied, strict=True):
            position = better[stored] + before
            placed.append((position, self.rank(better[stored], position)))
        return total, placed

    def rank(self, better: int, position: int) -> int:
        """The rank of a row at `position` with `better` rows of a better score before it."""
        return better + 1 if self.board.ties == "shared" else position + 1


@asynccontextmanager
async def _reading(pg: Pg, board: Board, window: Window, period: str) -> AsyncIterator[_SetReader]:
    """A reader of one set in one snapshot, its banned rows loaded."""
    async with _snapshot(pg) as conn:
        reader = _SetReader(conn, board, window, period)
        await reader.load_banned()
        yield reader


async def top(
    pg: Pg,
    board: Board,
    window: Window,
    period: str,
    limit: int,
    offset: int = 0,
    cursor: str | None = None,
) -> TopPage:
    """A page from `offset`, or after the position in `cursor` (as `ranking.top`)."""
    async with _reading(pg, board, window, period) as reader:
        if cursor is not None:
            rows = await reader.page_after(decode_cursor(cursor), limit)
            total, placed = await reader.place([row[:2] for row in rows[:1]])
        else:
            rows, total, placed = await _page_at(reader, offset, limit)
    entries: list[RankedEntry] = []
    next_cursor = None
    if rows:
        first_pos, first_rank = placed[0]
        entries = ranked_entries(board, rows, first_pos, first_rank)
        if first_pos + len(rows) < total:
            next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
    return TopPage(
        window=window, period=period, total=total, entries=entries, next_cursor=next_cursor
    )


async def _page_at(
    reader: _SetReader, offset: int, limit: int
) -> tuple[list[Row], int, list[tuple[int, int]]]:
    """The rows from position `offset`, the total, and (position, rank) of the first row:
    the score at `offset`, then the rows better than it, then the page from the first row
    of that score."""
    stored = await reader.score_at(offset)
    if stored is None:
        total, _ = await reader.better_than([])
        return [], total, []
    total, better = await reader.better_than([stored])
    rows = await reader.page_from(stored, offset - better[stored], limit)
    return rows, total, [(offset, reader.rank(better[stored], offset))]


async def around(
    pg: Pg, board: Board, window: Window, period: str, player_id: str, radius: int
) -> AroundPage | None:
    """The player and up to `radius` entries either side; None when unranked."""
    async with _reading(pg, board, window, period) as reader:
        found = await reader.rows_of([player_id])
        if not found:
            return None
        me = found[0]
        rows = [
            *await reader.page_before(me[:2], radius),
            me,
            *await reader.page_after(me[:2], radius),
        ]
        total, placed = await reader.place([rows[0][:2]])
    first_pos, first_rank = placed[0]
    return AroundPage(
        player_id=player_id,
        window=window,
        period=period,
        total=total,
        entries=ranked_entries(board, rows, first_pos, first_rank),
    )


async def ranks_of(
    pg: Pg, board: Board, window: Window, period: str, player_ids: Sequence[str]
) -> RanksPage:
    """Ranks of the given players, best first; the unranked in `missing`."""
    unique = list(dict.fromkeys(player_ids))
    async with _reading(pg, board, window, period) as reader:
        rows = await reader.rows_of(unique)
        total, placed = await reader.place([row[:2] for row in rows], positions=False)
    entries = [
        ranked_entries(board, [row], position, rank)[0]
        for row, (position, rank) in zip(rows, placed, strict=True)
    ]
    found = {e.player_id for e in entries}
    missing = [p for p in unique if p not in found]
    return ranks_page(board, window, period, total, entries, missing)


async def player_rank(
    pg: Pg, board: Board, window: Window, period: str, player_id: str
) -> PlayerRank | None:
    """The player's rank, score, the period's size and percentile; None when unranked."""
    page = await ranks_of(pg, board, window, period, [player_id])
    if not page.entries:
        return None
    entry = page.entries[0]
    return PlayerRank(
        player_id=player_id,
        window=window,
        period=period,
        rank=entry.rank,
        score=entry.score,
        total=page.total,
        percentile=percentile(entry.rank, page.total),
        display_name=entry.display_name,
    )
