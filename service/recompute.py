"""`rankstream rebuild BOARD --from-events`: recompute a board's `player_scores` from its
`score_events`, e.g. after changing its operator, order or windows in Postgres.

One transaction:
1. `LOCK TABLE player_scores IN SHARE ROW EXCLUSIVE MODE`: consumers' upserts wait until
   the commit (reads do not), so no event is counted twice or missed. An event committed
   before the lock is in the events read below; a batch still open is applied after the
   commit, on top of the recomputed rows.
2. The board's events, in acceptance order, are folded per (window, period of acceptance,
   player) with the consumers' own rule (`service.combine`), under the board's CURRENT
   configuration.
3. The board's rows are deleted and the new ones copied in, every one with
   `version = (highest version the board had) + 1`, so no value written to Redis under
   the old model can win against them through the version guard.

Players with events but no row at all on the board are left out: their entry was removed
(`DELETE /v1/leaderboards/{id}/players/{player}`) or every event came while they were
banned. The sets are rebuilt afterwards (service.rebuild).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg
import msgspec

from service import periods, queries
from service.boards import UnknownBoard
from service.combine import Key, Pending, combine, keys_of
from service.models import Board, ScoreEvent

CHUNK_ROWS = 50_000


class Recomputed(msgspec.Struct, frozen=True):
    """What a recompute did."""

    board_id: str
    events: int
    rows_before: int
    rows: int
    version: int
    seconds: float


class EventsDetached(Exception):
    """Older events are archived (detached partitions): a recompute would lose them."""


DETACHED_PARTITIONS = """
SELECT c.relname
FROM pg_class c
WHERE c.relkind = 'r' AND c.relname ~ '^score_events_[0-9]{4}_[0-9]{2}$'
  AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
ORDER BY c.relname
"""

BOARD_EVENTS = """
SELECT event_id, player_id, score, accepted_at
FROM score_events
WHERE board_id = $1
ORDER BY accepted_at, event_id
"""


async def recompute_board(pg: asyncpg.Pool, board: Board) -> Recomputed:
    """Recompute the board's rows from its events; see the module docstring."""
    started = time.monotonic()
    async with pg.acquire() as conn, conn.transaction():
        detached = await conn.fetch(DETACHED_PARTITIONS)
        if detached:
            names = ", ".join(r["relname"] for r in detached)
            raise EventsDetached(
                f"events of detached partitions ({names}) are not in score_events:"
                " recomputing from events would lose their scores"
            )
        await conn.execute("LOCK TABLE player_scores IN SHARE ROW EXCLUSIVE MODE")
        # player_scores has no foreign key to leaderboards (sql/004): hold the board row
        # against deletion, so the rows copied below never outlive a deleted board.
        if not await conn.fetch(queries.LOCK_BOARDS, [board.id]):
            raise UnknownBoard(board.id)
        before = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(max(version), 0) AS v"
            " FROM player_scores WHERE board_id = $1",
            board.id,
        )
        ranked = {
            r["player_id"]
            for r in await conn.fetch(
                "SELECT DISTINCT player_id FROM player_scores WHERE board_id = $1", board.id
            )
        }
        folded: dict[Key, Pending] = {}
        events = 0
        cursor = await conn.cursor(BOARD_EVENTS, board.id)
        while records := await cursor.fetch(CHUNK_ROWS):
            for r in records:
                if r["player_id"] not in ranked:
                    continue
                at: datetime = r["accepted_at"]
                event = ScoreEvent(
                    event_id=r["event_id"],
                    board_id=board.id,
                    player_id=r["player_id"],
                    score=r["score"],
                    accepted_ms=int(at.timestamp() * 1000),
                )
                for key in keys_of(board, event):
                    folded[key] = combine(board, folded.get(key), event)
                events += 1
        version = before["v"] + 1
        now = datetime.now(UTC)
        await conn.execute("DELETE FROM player_scores WHERE board_id = $1", board.id)
        await conn.copy_records_to_table(
            "player_scores",
            records=(
                (b, w, p, player, pending.score, version, periods.from_ms(pending.reached_ms), now)
                for (b, w, p, player), pending in folded.items()
            ),
            columns=[
                "board_id", "window_name", "period", "player_id", "score", "version",
                "reached_at", "updated_at",
            ],
        )  # fmt: skip
    return Recomputed(
        board_id=board.id,
        events=events,
        rows_before=before["n"],
        rows=len(folded),
        version=version,
        seconds=round(time.monotonic() - started, 3),
    )
