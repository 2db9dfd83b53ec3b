"""One batch of stream entries: Postgres transactions, then sorted sets, then acknowledgement.

The order is what makes the guarantees hold: an entry is acknowledged only after the
transaction recording it has committed and its rows are in Redis; event ids are claimed
in Postgres so a redelivered event changes nothing twice; Redis receives absolute values
read back from Postgres through the version guard, so any interleaving converges.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
from redis.asyncio import Redis

from consumers import lanes
from service import queries, rankcache, stream
from service.boards import BoardCache
from service.combine import Key, Pending, fold, keys_of
from service.models import Applied, Board, ScoreEvent
from service.settings import Settings

log = logging.getLogger("rankstream.consumer")
_encode_json = msgspec.json.Encoder().encode

Entry = tuple[bytes, dict[bytes, bytes]]  # stream id, fields


@dataclass
class Outcome:
    """What became of a batch: ids to acknowledge and entries that are poison."""

    ack: list[bytes] = field(default_factory=list)
    undecodable: list[Entry] = field(default_factory=list)
    unknown_board: list[Entry] = field(default_factory=list)
    new_events: int = 0
    duplicates: int = 0
    request_ids: list[str] = field(default_factory=list)


@dataclass
class Persisted:
    """A batch recorded in Postgres, waiting to be written to the sorted sets."""

    outcome: Outcome
    boards: dict[str, Board]
    rows: list[rankcache.ScoreRow] = field(default_factory=list)
    new: list[ScoreEvent] = field(default_factory=list)
    waiting: list[ScoreEvent] = field(default_factory=list)


class Pipeline:
    """Persists and applies batches; one per consumer process."""

    def __init__(self, settings: Settings, redis: Redis, pg: asyncpg.Pool) -> None:
        self.settings = settings
        self.redis = redis
        self.pg = pg
        self.boards = BoardCache(pg, settings.board_cache_ttl_s)
        self.script = rankcache.apply_script(redis)

    async def process(self, entries: list[Entry]) -> Outcome:
        """Persist and publish a batch. Infrastructure errors propagate: nothing may be
        acknowledged then."""
        persisted = await self.persist(entries)
        await self.publish(persisted)
        return persisted.outcome

    async def persist(self, entries: list[Entry]) -> Persisted:
        """Decode the batch and record it in one Postgres transaction."""
        outcome = Outcome()
        decoded: list[tuple[Entry, ScoreEvent]] = []
        for entry in entries:
            try:
                decoded.append((entry, stream.decode(entry[1])))
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                outcome.undecodable.append(entry)
        # A board created a moment ago must not look unknown: its entries would be left to
        # the claimer and applied after later ones, out of stream order.
        await self.boards.ensure({event.board_id for _, event in decoded})
        events: list[ScoreEvent] = []
        ids: list[bytes] = []
        for entry, event in decoded:
            if event.board_id not in self.boards.boards:
                outcome.unknown_board.append(entry)
                continue
            events.append(event)
            ids.append(entry[0])
            if event.request_id and event.request_id not in outcome.request_ids:
                outcome.request_ids.append(event.request_id)
        persisted = Persisted(outcome, dict(self.boards.boards))
        if events:
            await self._record_batch(events, persisted)
        outcome.ack.extend(ids)
        return persisted

    async def publish(self, persisted: Persisted) -> None:
        """Write a persisted batch's absolute values to the sorted sets, tell waiters."""
        boards = persisted.boards
        before = await self._ranks(boards, persisted.waiting)
        await rankcache.apply_rows(
            self.redis, self.script, boards, persisted.rows, self.settings.retention_periods
        )
        await rankcache.set_names(self.redis, _names(persisted.new))
        if persisted.waiting:
            await self._notify(boards, persisted.waiting, before)

    async def _record_batch(self, events: list[ScoreEvent], persisted: Persisted) -> None:
        first: dict[str, ScoreEvent] = {}
        for event in events:
            first.setdefault(event.event_id, event)
        parts = lanes.split(list(first.values()), self.settings.ingest_lanes)
        done = await asyncio.gather(
            *(self._record_lane(part, persisted.boards) for part in parts),
            return_exceptions=True,
        )
        # Every lane has committed or rolled back by now; a failed one fails the batch
        # (nothing is acknowledged, and a retry finds the committed lanes' events old).
        for result in done:
            if isinstance(result, BaseException):
                raise result
            rows, new = result
            persisted.rows += rows
            persisted.new += new
        persisted.waiting = [e for e in events if e.notify]
        persisted.outcome.new_events = len(persisted.new)
        persisted.outcome.duplicates = len(events) - len(persisted.new)

    async def _record_lane(
        self, unique: list[ScoreEvent], boards: dict[str, Board]
    ) -> tuple[list[rankcache.ScoreRow], list[ScoreEvent]]:
        """One lane's transaction: claim and record its events, upsert their scores;
        (changed rows, new events)."""
        async with self.pg.acquire() as conn, conn.transaction():
            banned = await _record_events(conn, unique)
            new = [e for e in unique if e.event_id in banned]
            old = [e for e in unique if e.event_id not in banned]
            counted = [e for e in new if not banned[e.event_id]]
            rows = await _record(conn, boards, new, counted) if new else []
            rows += await _read_back(conn, boards, old) if old else []
        return rows, new

    async def _ranks(
        self, boards: dict[str, Board], events: list[ScoreEvent]
    ) -> dict[str, tuple[int | None, int | None]]:
        from service import ranking

        out: dict[str, tuple[int | None, int | None]] = {}
        for event in events:
            board = boards[event.board_id]
            key = keys_of(board, event)[0]
            found = await ranking.player_rank(self.redis, board, key[1], key[2], event.player_id)
            out[event.event_id] = (found.rank, found.score) if found else (None, None)
        return out

    async def _notify(
        self,
        boards: dict[str, Board],
        events: list[ScoreEvent],
        before: dict[str, tuple[int | None, int | None]],
    ) -> None:
        after = await self._ranks(boards, events)
        await stream.send_notice(
            self.redis,
            [
                Applied(
                    event_id=e.event_id,
                    score=after[e.event_id][1],
                    rank=after[e.event_id][0],
                    previous_rank=before[e.event_id][0],
                )
                for e in events
            ],
        )


class BoardGone(Exception):
    """A batch's board was deleted after the batch was read: its transaction must not commit
    (the batch fails and is handed out again, as any failed batch; by then the board is
    unknown and its entries are dead-lettered)."""


async def _record_events(conn: asyncpg.Connection, events: list[ScoreEvent]) -> dict[str, bool]:
    """Hold the events' boards against deletion until the commit (BoardGone if one is gone),
    claim the events' ids and record the new events; new event_id -> player banned.

    The board lock is what the foreign key's per-row check did before (sql/004): no row of
    a deleted board is ever written, since a deletion takes the board row first and deletes
    the rows after it."""
    events = sorted(events, key=lambda e: e.event_id)  # one lock order for all consumers
    board_ids = {e.board_id for e in events}
    rows = await conn.fetch(
        queries.RECORD_NEW_EVENTS,
        *_json_columns(
            [
                (e.event_id, e.board_id, e.player_id, e.score, e.accepted_ms, e.request_id)
                for e in events
            ]
        ),
        sorted(board_ids),
    )
    if missing := board_ids - {r["board_id"] for r in rows}:
        raise BoardGone(", ".join(sorted(missing)))
    return {r["event_id"]: r["banned"] for r in rows if r["event_id"] is not None}


async def _record(
    conn: asyncpg.Connection,
    boards: dict[str, Board],
    events: list[ScoreEvent],
    counted: list[ScoreEvent],
) -> list[rankcache.ScoreRow]:
    """Upsert the scores of new events (`counted`: those of players not banned) and their
    players; return the changed rows."""
    groups: dict[tuple[str, str], list[tuple[str, str, str, str, int, int]]] = defaultdict(list)
    # Sorted, so concurrent consumers lock rows in one order and never deadlock; by player
    # first (the primary key's order), which decides nearly every comparison at once where
    # the board, window and period of most keys are equal (~2 -> 0.9 µs an event).
    for key, pending in sorted(fold(boards, counted).items(), key=_player_first):
        board = boards[key[0]]
        groups[(board.operator, board.order)].append((*key, pending.score, pending.reached_ms))
    changed: list[rankcache.ScoreRow] = []
    for group, items in groups.items():
        rows = await conn.fetch(queries.UPSERT_SCORES[group], *_json_columns(items))
        changed.extend(rankcache.rows_from_records(rows))
    await _upsert_players(conn, events)
    return changed


def _player_first(item: tuple[Key, Pending]) -> tuple[str, Key]:
    return item[0][3], item[0]


def _json_columns(rows: Sequence[tuple[str | int | None, ...]]) -> list[str]:
    """Rows (at least one) as the JSON array per column the ingest statements unpack (see
    service.queries)."""
    return [_encode_json(column).decode() for column in zip(*rows, strict=True)]


async def _read_back(
    conn: asyncpg.Connection, boards: dict[str, Board], events: list[ScoreEvent]
) -> list[rankcache.ScoreRow]:
    keys = {key for e in events for key in keys_of(boards[e.board_id], e)}
    rows = await conn.fetch(
        queries.SELECT_ROWS_BY_KEYS,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
    )
    return rankcache.rows_from_records(rows)


async def _upsert_players(conn: asyncpg.Connection, events: list[ScoreEvent]) -> None:
    latest: dict[str, ScoreEvent] = {}
    for event in events:
        if event.display_name is not None or event.metadata is not None:
            latest[event.player_id] = event
    if not latest:
        return
    await conn.execute(
        queries.UPSERT_PLAYERS,
        *_json_columns(
            [
                (player, e.display_name, e.metadata.decode() if e.metadata else None)
                for player, e in latest.items()
            ]
        ),
    )


def _names(events: list[ScoreEvent]) -> dict[str, dict[str, str]]:
    names: dict[str, dict[str, str]] = defaultdict(dict)
    for event in events:
        if event.display_name is not None:
            names[event.board_id][event.player_id] = event.display_name
    return names
