"""Every read endpoint against a small Python reference model, over generated boards.

The model knows only the rules of DESIGN.md: sort best first (desc: highest), `shared` ties
share a competition rank (1 + players strictly better) and are listed by player_id
bytewise; `earliest` ties give unique ranks, the earlier reached_at first. Each generated
board is read from Redis, then with its Redis keys gone (answered from Postgres), and both
must match the model and each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service.models import MAX_SAFE, Board
from tests.test_rankings import T0, Seed, drop_redis, make_board, remove, seed

PLAYER = st.text(alphabet="aAbBzZ09_.:@-", min_size=1, max_size=3)
SCORE = st.one_of(st.integers(-3, 3), st.sampled_from([MAX_SAFE, -MAX_SAFE]))
REACHED = st.integers(0, 3)  # ms after T0: equal times are common, so are ties on them
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Row:
    player_id: str
    score: int
    reached: int  # ms after T0


def sort_key(order: str, ties: str, row: Row) -> tuple[Any, ...]:
    """Best first: the model's order, from the rules (not from the key schema)."""
    better_first = -row.score if order == "desc" else row.score
    if ties == "earliest":
        return (better_first, row.reached, row.player_id.encode())
    return (better_first, row.player_id.encode())


def reference(order: str, ties: str, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Entries best first with their ranks, as the API shows them (names added later)."""
    ordered = sorted(rows, key=lambda r: sort_key(order, ties, r))
    entries = []
    for i, row in enumerate(ordered):
        if ties == "earliest":
            rank = i + 1
        else:
            better = [
                r for r in rows if (r.score > row.score if order == "desc" else r.score < row.score)
            ]
            rank = 1 + len(better)
        entries.append({"rank": rank, "player_id": row.player_id, "score": row.score})
    return entries


def with_names(entries: list[dict[str, Any]], names: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{**e, "display_name": names.get(e["player_id"])} for e in entries]


def segment(player_id: str) -> str:
    """A player id as a path segment: `.` and `..` must not read as dot segments."""
    return quote(player_id, safe="").replace(".", "%2E")


boards = st.fixed_dictionaries(
    {
        "order": st.sampled_from(["asc", "desc"]),
        "ties": st.sampled_from(["shared", "earliest"]),
        "rows": st.dictionaries(PLAYER, st.tuples(SCORE, REACHED), min_size=1, max_size=14),
        "named": st.sets(PLAYER, max_size=6),
        "limit": st.integers(1, 5),
        "radius": st.integers(0, 3),
        "friends": st.lists(PLAYER, max_size=8),
    }
)


async def read_everything(
    client: AsyncTestClient,  # type: ignore[type-arg]
    board: Board,
    players: Sequence[str],
    limit: int,
    radius: int,
    friends: Sequence[str],
    source: str,
) -> dict[str, Any]:
    """Every read answer of a board, each checked to come from `source`."""
    base = f"/v1/leaderboards/{board.id}"
    answers: dict[str, Any] = {}

    async def get(name: str, path: str, params: dict[str, Any] | None = None) -> Any:
        answer = await client.get(path, params=params or {})
        assert answer.headers.get("x-rankstream-source") == source, (name, answer.text)
        answers[name] = (answer.status_code, answer.json())
        return answer.json()

    offset = 0
    while True:
        page = await get(f"offset {offset}", f"{base}/top", {"limit": limit, "offset": offset})
        offset += limit
        if not page["entries"]:
            break
    cursor: str | None = None
    for n in range(100):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = await get(f"cursor {n}", f"{base}/top", params)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    for player in [*players, "nobody"]:
        path = f"{base}/players/{segment(player)}"
        await get(f"player {player}", path)
        await get(f"around {player}", f"{path}/around", {"radius": radius})
    ranks = await client.post(f"{base}/ranks", json={"player_ids": list(friends)})
    assert ranks.headers.get("x-rankstream-source") == source
    answers["ranks"] = (ranks.status_code, ranks.json())
    return answers


def check_against_model(
    answers: dict[str, Any],
    expected: list[dict[str, Any]],
    limit: int,
    radius: int,
    friends: Sequence[str],
) -> None:
    total = len(expected)
    pages = sorted(
        (int(name.split()[1]), body)
        for name, (_, body) in answers.items()
        if name.startswith("offset")
    )
    for offset, body in pages:
        assert body["total"] == total
        assert body["entries"] == expected[offset : offset + limit], offset
        assert (body["next_cursor"] is not None) == (offset + limit < total)
    walked = [
        e
        for _, body in sorted(
            (int(n.split()[1]), b) for n, (_, b) in answers.items() if n.startswith("cursor")
        )
        for e in body["entries"]
    ]
    assert walked == expected  # by cursor: nobody repeated, nobody skipped
    for i, entry in enumerate(expected):
        status, body = answers[f"player {entry['player_id']}"]
        assert status == 200
        assert (body["rank"], body["score"], body["total"]) == (
            entry["rank"],
            entry["score"],
            total,
        )
        assert body["display_name"] == entry["display_name"]
        assert body["percentile"] == round(100 * (total - entry["rank"] + 1) / total, 2)
        status, body = answers[f"around {entry['player_id']}"]
        assert status == 200
        assert body["entries"] == expected[max(0, i - radius) : i + radius + 1]
    assert answers["player nobody"][0] == 404
    assert answers["around nobody"][0] == 404
    status, body = answers["ranks"]
    assert status == 200
    wanted = set(friends)
    assert body["entries"] == [e for e in expected if e["player_id"] in wanted]
    ranked = {e["player_id"] for e in expected}
    assert body["missing"] == [p for p in dict.fromkeys(friends) if p not in ranked]
    assert body["total"] == total


@HYPOTHESIS
@given(spec=boards)
async def test_every_read_matches_the_model_from_redis_and_from_postgres(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    spec: dict[str, Any],
) -> None:
    await pg.execute("DELETE FROM players")  # display names are global; examples share a DB
    board = await make_board(client, spec["order"], spec["ties"])
    rows = [Row(p, score, reached) for p, (score, reached) in spec["rows"].items()]
    names = {p: f"name {p}" for p in spec["named"] if p in spec["rows"]}
    await seed(
        pg,
        redis,
        board,
        [Seed(r.player_id, r.score, T0 + r.reached, names.get(r.player_id)) for r in rows],
    )
    expected = with_names(reference(spec["order"], spec["ties"], rows), names)
    players = [r.player_id for r in rows]
    args = (players, spec["limit"], spec["radius"], spec["friends"])

    from_redis = await read_everything(client, board, *args, "redis")
    check_against_model(from_redis, expected, spec["limit"], spec["radius"], spec["friends"])

    await drop_redis(redis, board)
    from_postgres = await read_everything(client, board, *args, "postgres")
    assert from_postgres == from_redis


mutation = st.one_of(
    st.tuples(st.just("set"), PLAYER, SCORE, REACHED),
    st.tuples(st.just("remove"), PLAYER, st.just(0), st.just(0)),
)


@HYPOTHESIS
@given(
    spec=boards,
    source=st.sampled_from(["redis", "postgres"]),
    data=st.data(),
)
async def test_cursor_never_repeats_or_skips_a_player_who_did_not_move(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    spec: dict[str, Any],
    source: str,
    data: st.DataObject,
) -> None:
    order, ties, limit = spec["order"], spec["ties"], spec["limit"]
    board = await make_board(client, order, ties)
    to_redis = source == "redis"
    state = {p: Row(p, score, reached) for p, (score, reached) in spec["rows"].items()}
    versions = dict.fromkeys(state, 1)
    await seed(
        pg,
        redis,
        board,
        [Seed(r.player_id, r.score, T0 + r.reached) for r in state.values()],
        to_redis=to_redis,
    )
    moved: set[str] = set()
    seen: list[str] = []
    cursor: str | None = None
    last: tuple[Any, ...] | None = None
    for _ in range(60):
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        answer = await client.get(f"/v1/leaderboards/{board.id}/top", params=params)
        assert answer.status_code == 200
        assert answer.headers["x-rankstream-source"] == source
        body = answer.json()
        now = list(state.values())
        full = reference(order, ties, now)
        keyed = {r.player_id: sort_key(order, ties, r) for r in now}
        after = [e for e in full if last is None or keyed[e["player_id"]] > last]
        assert body["entries"] == [{**e, "display_name": None} for e in after[:limit]]
        assert body["total"] == len(now)
        seen.extend(e["player_id"] for e in body["entries"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        last = keyed[body["entries"][-1]["player_id"]]
        # players change between pages: new scores, new players, players leaving
        changes = data.draw(st.lists(mutation, max_size=3))
        if data.draw(st.booleans()):  # the cursor's own player moves or leaves
            kind, _, score, reached = data.draw(mutation)
            changes.append((kind, body["entries"][-1]["player_id"], score, reached))
        for kind, player, score, reached in changes:
            version = versions.get(player, 0) + 1
            versions[player] = version
            moved.add(player)
            if kind == "set":
                state[player] = Row(player, score, reached)
                seed_row = Seed(player, score, T0 + reached, version=version)
                await seed(pg, redis, board, [seed_row], to_redis=to_redis)
            elif player in state:
                del state[player]
                if to_redis:
                    await remove(pg, redis, board, player, version)
                else:
                    await pg.execute(
                        "DELETE FROM player_scores WHERE board_id = $1 AND player_id = $2",
                        board.id,
                        player,
                    )
    assert cursor is None
    for player in spec["rows"]:
        if player not in moved:
            assert seen.count(player) == 1, (player, seen)
