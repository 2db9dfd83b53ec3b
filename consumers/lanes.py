"""Splitting a batch into lanes: transactions that run side by side without sharing a row.

Every row an event touches (its `player_scores` keys and its `players` row) carries the
event's player_id, so events split by player never meet in Postgres: the lanes' row locks
are disjoint, they cannot deadlock each other, and every key's events stay in one lane, in
stream order. A batch's event ids are made unique before the split, so lanes never claim
the same id; another consumer may, and then waits for the first claim to commit, as always.
"""

from __future__ import annotations

from zlib import crc32

from service.models import ScoreEvent

# Fewest events per lane. A lane is a transaction of its own, with its own commit (a WAL
# flush) and round trips; that pays when a backlog brings full batches, not for the small
# batches of a consumer keeping up, which want the CPU the API needs.
MIN_LANE_EVENTS = 200


def lane_of(player_id: str, lanes: int) -> int:
    """The lane of a player's events (stable across processes and runs)."""
    return crc32(player_id.encode()) % lanes


def split(events: list[ScoreEvent], lanes: int) -> list[list[ScoreEvent]]:
    """Events by lane (at most `lanes`, fewer for a small batch), stream order kept within
    each; empty lanes left out."""
    lanes = min(lanes, len(events) // MIN_LANE_EVENTS)
    if lanes <= 1:
        return [events] if events else []
    parts: list[list[ScoreEvent]] = [[] for _ in range(lanes)]
    for event in events:
        parts[lane_of(event.player_id, lanes)].append(event)
    return [part for part in parts if part]
