"""The read side of `service.ranking`, answered from Postgres `player_scores`.

Used for past periods that left Redis and whenever Redis is unavailable or a set is
missing. Answers are identical to the Redis ones: the queries order by the same stored
score and sorted-set member (bytewise), rank with rank() for shared ties and row_number()
for earliest ties, and cursors are the same (stored score, member) positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import asyncpg

from service import queries
from service.models import (
    AroundPage,
    Board,
    PlayerRank,
    RankedEntry,
    RanksPage,
    TopPage,
    Window,
)
from service.ranking import decode_cursor, encode_cursor, percentile, ranks_page

Pg: TypeAlias = asyncpg.Pool | asyncpg.Connection


def _base(board: Board, window: Window, period: str) -> tuple[str, str, str, int, bool]:
    sign = -1 if board.order == "desc" else 1
    return board.id, window, period, sign, board.ties == "earliest"


def _split(rows: list[asyncpg.Record]) -> tuple[int, list[asyncpg.Record]]:
    total = int(rows[0]["total"]) if rows else 0
    return total, [r for r in rows if r["player_id"] is not None]


def _entries(board: Board, rows: list[asyncpg.Record]) -> list[RankedEntry]:
    sign = -1 if board.order == "desc" else 1
    return [
        RankedEntry(
            rank=int(r["rank"]),
            player_id=r["player_id"],
            score=sign * int(r["stored"]),
            display_name=r["display_name"],
        )
        for r in rows
    ]


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
    base = _base(board, window, period)
    if cursor is not None:
        stored, member = decode_cursor(cursor)
        rows = await pg.fetch(queries.PG_RANK_AFTER, *base, stored, member, limit)
    else:
        rows = await pg.fetch(queries.PG_RANK_RANGE, *base, offset, limit)
    total, page = _split(rows)
    next_cursor = None
    if page and int(page[-1]["pos"]) + 1 < total:
        next_cursor = encode_cursor(int(page[-1]["stored"]), page[-1]["member"])
    return TopPage(
        window=window,
        period=period,
        total=total,
        entries=_entries(board, page),
        next_cursor=next_cursor,
    )


async def around(
    pg: Pg, board: Board, window: Window, period: str, player_id: str, radius: int
) -> AroundPage | None:
    """The player and up to `radius` entries either side; None when unranked."""
    rows = await pg.fetch(queries.PG_RANK_AROUND, *_base(board, window, period), player_id, radius)
    total, page = _split(rows)
    if not page:
        return None
    return AroundPage(
        player_id=player_id,
        window=window,
        period=period,
        total=total,
        entries=_entries(board, page),
    )


async def ranks_of(
    pg: Pg, board: Board, window: Window, period: str, player_ids: Sequence[str]
) -> RanksPage:
    """Ranks of the given players, best first; the unranked in `missing`."""
    unique = list(dict.fromkeys(player_ids))
    rows = await pg.fetch(queries.PG_RANK_PLAYERS, *_base(board, window, period), unique)
    total, page = _split(rows)
    entries = _entries(board, page)
    found = {e.player_id for e in entries}
    missing = [p for p in unique if p not in found]
    return ranks_page(board, window, period, total, entries, missing)


async def player_rank(
    pg: Pg, board: Board, window: Window, period: str, player_id: str
) -> PlayerRank | None:
    """The player's rank, score, the period's size and percentile; None when unranked."""
    rows = await pg.fetch(queries.PG_RANK_AROUND, *_base(board, window, period), player_id, 0)
    total, page = _split(rows)
    if not page:
        return None
    entry = _entries(board, page)[0]
    return PlayerRank(
        player_id=player_id,
        window=window,
        period=period,
        rank=entry.rank,
        score=entry.score,
        total=total,
        percentile=percentile(entry.rank, total),
        display_name=entry.display_name,
    )
