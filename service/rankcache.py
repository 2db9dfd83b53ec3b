"""Writes to the ranking cache: absolute values into sorted sets through the version guard."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service import keys, periods, resp
from service.models import Board, Window

_APPLY_LUA = (Path(__file__).parent / "apply.lua").read_text()


class ScoreRow(msgspec.Struct, frozen=True):
    """One `player_scores` row, as the cache needs it."""

    board_id: str
    window: Window
    period: str
    player_id: str
    score: int
    version: int
    reached_at: datetime


def rows_from_records(records: Iterable[Mapping[str, Any]]) -> list[ScoreRow]:
    """ScoreRows of `player_scores` records (columns board_id, window_name, period,
    player_id, score, version, reached_at)."""
    return [
        ScoreRow(
            board_id=r["board_id"],
            window=r["window_name"],
            period=r["period"],
            player_id=r["player_id"],
            score=r["score"],
            version=r["version"],
            reached_at=r["reached_at"],
        )
        for r in records
    ]


class Removal(msgspec.Struct, frozen=True):
    """A player leaving one set; version must exceed every version applied before."""

    board_id: str
    window: Window
    period: str
    player_id: str
    version: int


def apply_script(redis: Redis) -> AsyncScript:
    """The version-guarded apply script, registered on this client."""
    return redis.register_script(_APPLY_LUA)


def expire_at_ms(window: Window, period: str, retention: int) -> int:
    """When a period's sets leave Redis: `retention` periods after it ended (0: never)."""
    end = periods.period_end(window, period)
    if end is None:
        return 0
    for _ in range(retention):
        following = periods.period_end(window, periods.period_id(window, end))
        assert following is not None
        end = following
    return int(end.timestamp() * 1000)


def _row_arguments(player: str, version: int, stored: int | str, member: str) -> bytes:
    """One row's four script arguments in the Redis protocol, formatted as one string: the
    consumer encodes ~1,000 rows a batch, and formatting each argument on its own (str,
    encode, a header) cost ~5 µs a row. Lengths are in bytes, so text that is not ASCII
    takes the general path."""
    v, s = str(version), str(stored)
    text = (
        f"${len(player)}\r\n{player}\r\n${len(v)}\r\n{v}\r\n"
        f"${len(s)}\r\n{s}\r\n${len(member)}\r\n{member}\r\n"
    )
    if text.isascii():
        return text.encode()
    return resp.command(player.encode(), v.encode(), s.encode(), member.encode()).split(b"\r\n", 1)[
        1
    ]


def _apply_command(
    sha: bytes,
    board: Board,
    window: Window,
    period: str,
    retention: int,
    rows: list[bytes],
) -> bytes:
    """EVALSHA of the apply script over rows already encoded by _row_arguments."""
    head = resp.command(
        b"EVALSHA",
        sha,
        b"3",
        keys.set_key(board.id, window, period).encode(),
        keys.versions_key(board.id, window, period).encode(),
        keys.revision_key(board.id).encode(),
        str(expire_at_ms(window, period, retention)).encode(),
    )
    # resp.command counted 7 arguments; the rows add four each.
    return b"*%d\r\n" % (7 + 4 * len(rows)) + head.split(b"\r\n", 1)[1] + b"".join(rows)


async def apply_rows(
    redis: Redis,
    script: AsyncScript,
    boards: Mapping[str, Board],
    rows: Iterable[ScoreRow | Removal],
    retention: int,
) -> int:
    """Apply rows to their sets in one round trip; return how many players changed."""
    grouped: dict[tuple[str, Window, str], list[bytes]] = {}
    for row in rows:
        board = boards[row.board_id]
        if isinstance(row, Removal):
            item = _row_arguments(row.player_id, row.version, "0", "")
        else:
            # The time a score was reached is part of the member for earliest ties only.
            reached_ms = int(row.reached_at.timestamp() * 1000) if board.ties == "earliest" else 0
            item = _row_arguments(
                row.player_id,
                row.version,
                keys.zscore(board.order, row.score),
                keys.member(board.ties, row.player_id, reached_ms),
            )
        grouped.setdefault((row.board_id, row.window, row.period), []).append(item)
    if not grouped:
        return 0
    sha = str(script.sha).encode()
    commands = [
        _apply_command(sha, boards[board_id], window, period, retention, items)
        for (board_id, window, period), items in grouped.items()
    ]
    try:
        results = await resp.send(redis, commands)
    except NoScriptError:
        # A restarted Redis forgot the script. Every write is version-guarded, so sending
        # the whole batch again after loading it is safe.
        await redis.script_load(_APPLY_LUA)
        results = await resp.send(redis, commands)
    return sum(int(n) for n in results)


async def set_names(redis: Redis, names: Mapping[str, Mapping[str, str]]) -> None:
    """Store display names: board_id -> {player_id: display_name}. Encoded by hand (one
    HSET per board): redis-py took ~2.4-3.4 µs of CPU per name, this ~0.7-1.1."""
    commands = [
        resp.command(
            b"HSET",
            keys.names_key(board_id).encode(),
            *[
                part
                for player, name in by_player.items()
                for part in (player.encode(), name.encode())
            ],
        )
        for board_id, by_player in names.items()
        if by_player
    ]
    if commands:
        await resp.send(redis, commands)
