"""Shared test helpers: a reference model of the semantics and readers of both stores."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from service import keys, periods
from service.models import MAX_SAFE
from service.settings import Settings

ADMIN_KEY = "rs_test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

Key = tuple[str, str, str, str]  # board, window, period, player


@dataclass
class Model:
    """Reference semantics: operators and windows, applied once per event_id."""

    boards: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[Key, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    times: dict[Key, int] = field(default_factory=dict)

    def submit(self, board_id: str, player: str, score: int, event_id: str, at_ms: int) -> None:
        if event_id in self.seen:
            return
        self.seen.add(event_id)
        board = self.boards[board_id]
        at = periods.from_ms(at_ms)
        for window in board["windows"]:
            key = (board_id, window, periods.period_id(window, at), player)
            old = self.values.get(key)
            if board["operator"] == "latest":
                if old is not None and at_ms < self.times.get(key, at_ms):
                    continue  # last accepted wins, whatever order it arrives in
                self.times[key] = at_ms
                new = score
            elif old is None:
                new = score
            elif board["operator"] == "increment":
                new = max(-MAX_SAFE, min(MAX_SAFE, old + score))
            elif board["order"] == "desc":
                new = max(old, score)
            else:
                new = min(old, score)
            self.values[key] = new

    def set_of(self, board: str, window: str, period: str) -> dict[str, int]:
        return {k[3]: v for k, v in self.values.items() if k[:3] == (board, window, period)}


async def drained(redis: Redis, settings: Settings, timeout: float = 30.0) -> None:
    """Wait until every stream entry was read and acknowledged by the group."""
    deadline = time.monotonic() + timeout
    groups: list[Any] = []
    while time.monotonic() < deadline:
        try:
            groups = await redis.xinfo_groups(settings.stream_key)
        except ConnectionError:  # redis-py's: a restarted server closed the connection
            await asyncio.sleep(0.05)
            continue
        group = next((g for g in groups if g["name"] == settings.consumer_group.encode()), None)
        if group is not None and group["pending"] == 0 and group["lag"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream not drained after {timeout}s: {groups}")


async def redis_set(
    redis: Redis, board: dict[str, Any], window: str, period: str
) -> dict[str, int]:
    """A sorted set decoded back to player -> real score."""
    raw = await redis.zrange(keys.set_key(board["id"], window, period), 0, -1, withscores=True)
    return {
        keys.player_of(board["ties"], m.decode()): keys.real_score(board["order"], s)
        for m, s in raw
    }


async def pg_set(pg: asyncpg.Connection, board: str, window: str, period: str) -> dict[str, int]:
    rows = await pg.fetch(
        "SELECT player_id, score FROM player_scores"
        " WHERE board_id = $1 AND window_name = $2 AND period = $3",
        board,
        window,
        period,
    )
    return {r["player_id"]: r["score"] for r in rows}


async def redis_order(redis: Redis, board: dict[str, Any], window: str, period: str) -> list[str]:
    """Players in the set's rank order."""
    raw = await redis.zrange(keys.set_key(board["id"], window, period), 0, -1)
    return [keys.player_of(board["ties"], m.decode()) for m in raw]
