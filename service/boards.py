"""Leaderboard configuration: create, read, and a per-process cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime

import asyncpg
import msgspec

from service import periods, queries
from service.models import (
    Board,
    BoardCreate,
    BoardPatch,
    BoardView,
    InvalidField,
    PeriodInfo,
    check_metadata,
)


class BoardExists(Exception):
    """A board with that id exists already."""


class UnknownBoard(Exception):
    """No board has that id."""

    def __init__(self, board_id: str) -> None:
        super().__init__(f"no leaderboard {board_id!r}")
        self.board_id = board_id


def _board(row: asyncpg.Record) -> Board:
    return Board(
        id=row["id"],
        order=row["sort_order"],
        operator=row["operator"],
        windows=tuple(row["windows"]),
        ties=row["ties"],
        min_score=row["min_score"],
        max_score=row["max_score"],
        title=row["title"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def create(pg: asyncpg.Pool | asyncpg.Connection, spec: BoardCreate) -> Board:
    """Store a new board; BoardExists if the id is taken."""
    spec.check()
    row = await pg.fetchrow(
        queries.INSERT_BOARD,
        spec.id,
        spec.order,
        spec.operator,
        list(spec.windows),
        spec.ties,
        spec.min_score,
        spec.max_score,
        spec.title,
        spec.metadata,
    )
    if row is None:
        raise BoardExists(spec.id)
    return _board(row)


async def patch(pg: asyncpg.Pool | asyncpg.Connection, board: Board, change: BoardPatch) -> Board:
    """Change what needs no rebuild: title, bounds, metadata (UnknownBoard if gone)."""
    merged = msgspec.structs.replace(
        board,
        **{
            name: getattr(change, name)
            for name in change.__struct_fields__
            if getattr(change, name) is not msgspec.UNSET
        },
    )
    if (
        merged.min_score is not None
        and merged.max_score is not None
        and merged.min_score > merged.max_score
    ):
        raise InvalidField("min_score", "must not be greater than max_score")
    check_metadata(merged.metadata)
    row = await pg.fetchrow(
        queries.UPDATE_BOARD,
        board.id,
        merged.title,
        merged.min_score,
        merged.max_score,
        merged.metadata,
    )
    if row is None:
        raise UnknownBoard(board.id)
    return _board(row)


async def load_all(pg: asyncpg.Pool | asyncpg.Connection) -> dict[str, Board]:
    """Every board by id."""
    return {row["id"]: _board(row) for row in await pg.fetch(queries.SELECT_BOARDS)}


async def view(pg: asyncpg.Pool | asyncpg.Connection, board: Board, now: datetime) -> BoardView:
    """A board with each window's current period, its start, reset and player count."""
    current = [(w, periods.period_id(w, now)) for w in board.windows]
    counts = {
        (r["window_name"], r["period"]): r["players"]
        for r in await pg.fetch(
            queries.COUNT_PLAYERS, board.id, [w for w, _ in current], [p for _, p in current]
        )
    }
    infos = [
        PeriodInfo(
            window=w,
            period=p,
            starts_at=periods.period_start(w, p) or board.created_at,
            resets_at=periods.period_end(w, p),
            players=counts.get((w, p), 0),
        )
        for w, p in current
    ]
    fields = {name: getattr(board, name) for name in Board.__struct_fields__}
    return BoardView(**fields, periods=infos)


class BoardCache:
    """Boards by id, reloaded whole every `ttl_s` and on a miss (at most every 0.2 s)."""

    MISS_RELOAD_S = 0.2

    def __init__(self, pg: asyncpg.Pool, ttl_s: float) -> None:
        self._pg = pg
        self._ttl_s = ttl_s
        self._boards: dict[str, Board] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def boards(self) -> Mapping[str, Board]:
        """The boards as last loaded."""
        return self._boards

    async def reload(self) -> None:
        """Load every board now."""
        await self._refresh(time.monotonic())

    async def _refresh(self, asked_at: float) -> None:
        """Load every board, unless a load that began at or after `asked_at` (and so saw
        every change committed before it) finished while this caller waited for the lock.

        When the TTL runs out under load, every request in flight finds the cache stale at
        once; each reloading in turn queued them all behind one Postgres query apiece."""
        async with self._lock:
            if self._loaded_at >= asked_at:
                return
            started = time.monotonic()
            self._boards = await load_all(self._pg)
            self._loaded_at = started  # the age of what was read: from the query's start

    async def get(self, board_id: str) -> Board:
        """The board, or UnknownBoard."""
        now = time.monotonic()
        age = now - self._loaded_at
        board = self._boards.get(board_id)
        if age > self._ttl_s or (board is None and age > self.MISS_RELOAD_S):
            await self._refresh(now)
            board = self._boards.get(board_id)
        if board is None:
            raise UnknownBoard(board_id)
        return board

    async def ensure(self, board_ids: set[str]) -> None:
        """Reload unless every board is cached and the cache is fresh (no miss throttle:
        for callers that must not take a board created a moment ago for an unknown one)."""
        now = time.monotonic()
        stale = now - self._loaded_at > self._ttl_s
        if stale or not board_ids <= self._boards.keys():
            await self._refresh(now)

    def put(self, board: Board) -> None:
        """Record a board this process just created or changed."""
        self._boards = {**self._boards, board.id: board}
