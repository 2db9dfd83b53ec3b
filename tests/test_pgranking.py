"""The Postgres reads (`service.pgranking`) against the Redis ones (`service.ranking`) on the
same board, where the index-driven queries have edge cases of their own: banned players
inside a page and at a tie group's boundary (skipped before OFFSET/LIMIT count them, left
out of every count), `earliest` ties inside one millisecond (the index orders them by
microsecond, the member by player_id), both orders, every offset, cursors at positions no
player holds (a member that moved), around-me at both ends, friends with unknown and
banned ids.

Redis holds what the consumer leaves for such a board: every row but the banned players'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import keys, pgranking, rankcache, ranking
from service.models import MAX_SAFE, Board
from tests.test_rankings import make_board
from tests.test_rankings_model import HYPOTHESIS, PLAYER, SCORE

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Microseconds after T0 within 3 ms: several players inside one millisecond, in another
# order by microsecond than by player_id.
REACHED_US = st.integers(0, 2_999)


@dataclass(frozen=True)
class Player:
    player_id: str
    score: int
    reached_us: int
    banned: bool = False


async def load(
    pg: asyncpg.Connection, redis: Redis, board: Board, players: Sequence[Player]
) -> None:
    """Every row in Postgres, banned players flagged there; the others in Redis."""
    await pg.executemany(
        "INSERT INTO player_scores (board_id, window_name, period, player_id, score, reached_at)"
        " VALUES ($1, 'all', 'all', $2, $3, $4)",
        [
            (board.id, p.player_id, p.score, T0 + timedelta(microseconds=p.reached_us))
            for p in players
        ],
    )
    await pg.executemany(
        "INSERT INTO players (player_id, display_name, banned) VALUES ($1, $2, $3)"
        " ON CONFLICT (player_id) DO UPDATE SET display_name = EXCLUDED.display_name,"
        " banned = EXCLUDED.banned",
        [(p.player_id, f"name {p.player_id}", p.banned) for p in players],
    )
    ranked = [p for p in players if not p.banned]
    rows = [
        rankcache.ScoreRow(
            board.id,
            "all",
            "all",
            p.player_id,
            p.score,
            1,
            T0 + timedelta(microseconds=p.reached_us),
        )
        for p in ranked
    ]
    if rows:
        await rankcache.apply_rows(
            redis, rankcache.apply_script(redis), {board.id: board}, rows, retention=2
        )
        await rankcache.set_names(
            redis, {board.id: {p.player_id: f"name {p.player_id}" for p in ranked}}
        )


async def same(redis_read: Any, pg_read: Any) -> Any:
    """The Postgres answer, which must equal the Redis one."""
    try:
        expected = await redis_read
    except ranking.SetMissing:
        expected = "missing"
    found = await pg_read
    if expected == "missing":  # an empty set: Postgres answers empty where Redis has none
        return found
    assert found == expected
    return found


async def check_every_read(
    pg: asyncpg.Connection,
    redis: Redis,
    board: Board,
    players: Sequence[Player],
    limit: int,
    radius: int,
    cursors: Sequence[tuple[int, str]],
    friends: Sequence[str],
) -> None:
    """Every read of the board from both stores: pages at every offset, pages after every
    entry and after the given (stored score, member) positions, every player's rank and
    around-me, the friends board."""
    ranked = [p for p in players if not p.banned]
    args = (board, "all", "all")
    for offset in range(len(ranked) + 2):
        page = await same(
            ranking.top(redis, *args, limit, offset), pgranking.top(pg, *args, limit, offset)
        )
        assert page.total == len(ranked)
        if page.next_cursor is not None:
            await same(
                ranking.top(redis, *args, limit, cursor=page.next_cursor),
                pgranking.top(pg, *args, limit, cursor=page.next_cursor),
            )
    for stored, member in cursors:
        cursor = ranking.encode_cursor(stored, member)
        await same(
            ranking.top(redis, *args, limit, cursor=cursor),
            pgranking.top(pg, *args, limit, cursor=cursor),
        )
    for player_id in [*(p.player_id for p in players), "nobody"]:
        await same(
            ranking.player_rank(redis, *args, player_id, strict=True),
            pgranking.player_rank(pg, *args, player_id),
        )
        await same(
            ranking.around(redis, *args, player_id, radius),
            pgranking.around(pg, *args, player_id, radius),
        )
    await same(ranking.ranks_of(redis, *args, friends), pgranking.ranks_of(pg, *args, friends))


boards_spec = st.fixed_dictionaries(
    {
        "order": st.sampled_from(["asc", "desc"]),
        "ties": st.sampled_from(["shared", "earliest"]),
        "rows": st.dictionaries(
            PLAYER, st.tuples(SCORE, REACHED_US, st.booleans()), min_size=1, max_size=16
        ),
        "limit": st.integers(1, 4),
        "radius": st.integers(0, 3),
        "cursors": st.lists(st.tuples(st.integers(-3, 3), PLAYER), max_size=4),
        "friends": st.lists(PLAYER, max_size=8),
    }
)


@HYPOTHESIS
@given(spec=boards_spec)
async def test_postgres_answers_as_redis_with_banned_players_and_ties_in_one_millisecond(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    spec: dict[str, Any],
) -> None:
    await pg.execute("DELETE FROM players")  # names and bans are global; examples share a DB
    board = await make_board(client, spec["order"], spec["ties"])
    players = [Player(p, score, us, banned) for p, (score, us, banned) in spec["rows"].items()]
    await load(pg, redis, board, players)
    # Cursors: generated positions, and each member at a score it does not hold (moved).
    cursors = list(spec["cursors"])
    for p in players:
        member = keys.member(
            board.ties, p.player_id, int(T0.timestamp() * 1000) + p.reached_us // 1000
        )
        stored = keys.zscore(board.order, p.score)
        cursors.append((stored + 1 if stored < MAX_SAFE else stored - 1, member))
    friends = [*spec["friends"], *(p.player_id for p in players if p.banned), "nobody"]
    await check_every_read(
        pg, redis, board, players, spec["limit"], spec["radius"], cursors, friends
    )


async def test_deep_pages_of_a_larger_board_with_banned_players_in_tie_groups(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    """2,000 players on 40 scores: deep offsets cross many tie groups, and banned players
    sit inside groups and at their first and last places."""
    for order, ties in (("desc", "shared"), ("asc", "earliest")):
        board = await make_board(client, order, ties)
        players = []
        for i in range(2_000):
            score = i % 40
            # the first and last player of some score groups, and a few inside, banned
            banned = i in (7, 47, 1_960 + 7, 1_999, 1_000) or (i % 40 == 3 and i % 200 == 3)
            players.append(Player(f"q{i:04d}", score, (i * 7) % 2_000, banned))
        await load(pg, redis, board, players)
        args = (board, "all", "all")
        for offset in (0, 49, 50, 51, 999, 1_000, 1_001, 1_950, 1_975, 1_990, 1_995, 2_000):
            page = await same(
                ranking.top(redis, *args, 25, offset), pgranking.top(pg, *args, 25, offset)
            )
            if page.next_cursor:
                await same(
                    ranking.top(redis, *args, 25, cursor=page.next_cursor),
                    pgranking.top(pg, *args, 25, cursor=page.next_cursor),
                )
        for player_id in ("q0000", "q0039", "q0040", "q1000", "q1001", "q1998", "q1999"):
            await same(
                ranking.around(redis, *args, player_id, 50),
                pgranking.around(pg, *args, player_id, 50),
            )
        friends = [f"q{i:04d}" for i in range(0, 2_000, 19)] + ["q1999", "nobody"]
        page = await same(
            ranking.ranks_of(redis, *args, friends), pgranking.ranks_of(pg, *args, friends)
        )
        assert "q1999" in page.missing and "nobody" in page.missing
