"""Folding a batch's events into one new value per (board, window, period, player)."""

from __future__ import annotations

from dataclasses import dataclass

from service import periods
from service.models import MAX_SAFE, Board, ScoreEvent, Window

Key = tuple[str, Window, str, str]  # board_id, window, period, player_id


@dataclass(slots=True)
class Pending:
    """The batch's combined value for one key, and when (unix ms) it was reached."""

    score: int
    reached_ms: int


def keys_of(board: Board, event: ScoreEvent) -> list[Key]:
    """Every (board, window, period, player) an event updates: the current period of each
    of the board's windows, taken from the event's acceptance time."""
    return [
        (board.id, window, periods.period_id_ms(window, event.accepted_ms), event.player_id)
        for window in board.windows
    ]


def combine(board: Board, current: Pending | None, event: ScoreEvent) -> Pending:
    """Apply one event on top of the batch's value so far."""
    at = event.accepted_ms
    if current is None:
        return Pending(event.score, at)
    if board.operator == "increment":
        total = max(-MAX_SAFE, min(MAX_SAFE, current.score + event.score))
        return Pending(total, at)
    if board.operator == "latest":  # last accepted wins, as in the upsert's guard
        return Pending(event.score, at) if at >= current.reached_ms else current
    better = event.score > current.score if board.order == "desc" else event.score < current.score
    return Pending(event.score, at) if better else current


def fold(boards: dict[str, Board], events: list[ScoreEvent]) -> dict[Key, Pending]:
    """Combined values of a batch, events taken in stream order."""
    out: dict[Key, Pending] = {}
    for event in events:
        board = boards[event.board_id]
        for key in keys_of(board, event):
            out[key] = combine(board, out.get(key), event)
    return out
