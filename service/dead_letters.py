"""Dead letters: listing them and replaying them into the submission stream.

The consumers (consumers/dead_letters.py) record every poison entry in the `dead_letters`
table with its original payload. Once the cause is fixed (e.g. the unknown board now
exists), a replay XADDs the stored payload to the submission stream again and stamps
`replayed_at`. The event keeps its `event_id`, so it is applied at most once however often
it is replayed. Payloads that still do not decode are left alone (and reported).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
from redis.asyncio import Redis

from service import stream

LIST_LIMIT = 1_000

SELECT_DEAD_LETTERS = """
SELECT id, stream_id, payload, reason, deliveries, created_at, replayed_at
FROM dead_letters
WHERE ($1::boolean OR replayed_at IS NULL)
ORDER BY id
LIMIT $2
"""

# Rows to replay, locked so two concurrent replays never send one row twice.
LOCK_FOR_REPLAY = """
SELECT id, payload, replayed_at FROM dead_letters
WHERE CASE WHEN $1::bigint[] IS NULL THEN replayed_at IS NULL ELSE id = ANY($1::bigint[]) END
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

MARK_REPLAYED = "UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1::bigint[])"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A poison entry, with what could be decoded of it."""

    id: Annotated[int, msgspec.Meta(examples=[7])]
    stream_id: str
    reason: str
    deliveries: int
    created_at: datetime
    replayed_at: datetime | None
    event_id: str | None
    board_id: str | None
    player_id: str | None
    score: int | None
    payload: str | None = None  # undecodable payloads only: a printable excerpt


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay did."""

    replayed: Annotated[list[int], msgspec.Meta(examples=[[7, 9]])]
    """Dead letters sent to the submission stream again."""
    undecodable: list[int]
    """Dead letters left alone: their payload is not a submission."""
    not_found: list[int]
    """Requested ids with no dead letter (or being replayed by someone else right now)."""


def _view(r: asyncpg.Record) -> DeadLetter:
    payload: bytes = r["payload"]
    try:
        event = stream.decode({stream.FIELD: payload})
    except (msgspec.DecodeError, msgspec.ValidationError):
        return DeadLetter(
            id=r["id"], stream_id=r["stream_id"], reason=r["reason"],
            deliveries=r["deliveries"], created_at=r["created_at"],
            replayed_at=r["replayed_at"], event_id=None, board_id=None, player_id=None,
            score=None, payload=payload[:200].decode("utf-8", "replace"),
        )  # fmt: skip
    return DeadLetter(
        id=r["id"], stream_id=r["stream_id"], reason=r["reason"], deliveries=r["deliveries"],
        created_at=r["created_at"], replayed_at=r["replayed_at"], event_id=event.event_id,
        board_id=event.board_id, player_id=event.player_id, score=event.score,
    )  # fmt: skip


async def list_dead_letters(
    pg: asyncpg.Pool | asyncpg.Connection, *, replayed: bool = False, limit: int = LIST_LIMIT
) -> list[DeadLetter]:
    """Dead letters, oldest first: those not replayed yet, or every one with `replayed`."""
    return [_view(r) for r in await pg.fetch(SELECT_DEAD_LETTERS, replayed, limit)]


def _decodable(payload: bytes) -> bool:
    try:
        stream.decode({stream.FIELD: payload})
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


async def replay(
    redis: Redis, pg: asyncpg.Pool, stream_key: str, ids: list[int] | None = None
) -> ReplayResult:
    """Send dead letters to the submission stream again: the given ids, or every one not
    replayed yet. XADD happens before `replayed_at` is committed: a crash in between
    replays a row twice at worst, which its event_id makes harmless."""
    async with pg.acquire() as conn, conn.transaction():
        rows = await conn.fetch(LOCK_FOR_REPLAY, ids)
        good = [r for r in rows if _decodable(r["payload"])]
        if good:
            async with redis.pipeline(transaction=True) as pipe:
                for r in good:
                    pipe.xadd(stream_key, {stream.FIELD: r["payload"]})
                await pipe.execute()
            await conn.execute(MARK_REPLAYED, [r["id"] for r in good])
    found = {r["id"] for r in rows}
    sent = {r["id"] for r in good}
    return ReplayResult(
        replayed=sorted(sent),
        undecodable=sorted(found - sent),
        not_found=[i for i in (ids or []) if i not in found],
    )
