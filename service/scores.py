"""Accepting submissions: validate against the board, stamp, and put on the stream."""

from __future__ import annotations

import time
import uuid

import msgspec

from service.boards import BoardCache
from service.models import (
    BatchSubmit,
    Board,
    InvalidField,
    ScoreEvent,
    ScoreSubmit,
    check_metadata,
)


def to_event(
    board: Board,
    item: ScoreSubmit,
    board_id: str,
    accepted_ms: int,
    request_id: str | None,
    notify: bool = False,
    prefix: str = "",
) -> ScoreEvent:
    """Check one submission against its board and make its stream event."""
    board.check_score(item.score, prefix + "score")
    check_metadata(item.metadata, prefix + "metadata")
    return ScoreEvent(
        event_id=item.event_id or str(uuid.uuid4()),
        board_id=board_id,
        player_id=item.player_id,
        score=item.score,
        accepted_ms=accepted_ms,
        display_name=item.display_name,
        metadata=msgspec.json.encode(item.metadata) if item.metadata is not None else None,
        request_id=request_id,
        notify=notify,
    )


async def prepare_one(
    boards: BoardCache,
    board_id: str,
    item: ScoreSubmit,
    request_id: str | None,
    notify: bool = False,
) -> ScoreEvent:
    """The event of a single submission; UnknownBoard / InvalidField when it cannot be."""
    board = await boards.get(board_id)
    return to_event(board, item, board_id, now_ms(), request_id, notify)


async def prepare_batch(
    boards: BoardCache, items: list[BatchSubmit], request_id: str | None
) -> list[ScoreEvent]:
    """Events of a batch, all or nothing: the first bad item fails the whole batch."""
    accepted_ms = now_ms()
    events = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        prefix = f"submissions[{index}]."
        board = await boards.get(item.board_id)
        if item.event_id is not None:
            if item.event_id in seen:
                raise InvalidField(prefix + "event_id", "repeats an event_id of this batch")
            seen.add(item.event_id)
        events.append(to_event(board, item, item.board_id, accepted_ms, request_id, False, prefix))
    return events


def now_ms() -> int:
    """Acceptance time: the clock of the API process, in unix ms."""
    return time.time_ns() // 1_000_000
