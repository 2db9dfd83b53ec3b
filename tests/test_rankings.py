"""Read API: ranks and ties, validation, ETag/304, and the Postgres fallback (examples).

Boards are created through the API; rankings are seeded exactly as the consumer writes
them: `player_scores` rows in Postgres, then the same rows through `rankcache.apply_rows`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import boards, coldstart, keys, periods, pgranking, rankcache, ranking
from service.app import create_app
from service.connections import redis_client
from service.models import Board, Window
from service.settings import Settings
from service.wire import ReadLink
from tests.support import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
_board_numbers = itertools.count(1)


# --- seeding helpers (shared with test_rankings_model.py) ----------------------------------


@dataclass
class Seed:
    """One player's row in one set."""

    player_id: str
    score: int
    reached_ms: int = T0
    name: str | None = None
    version: int = 1


def at_ms(ms: int) -> datetime:
    """Exact UTC datetime of unix ms."""
    return EPOCH + timedelta(milliseconds=ms)


async def make_board(
    client: AsyncTestClient,  # type: ignore[type-arg]
    order: str = "desc",
    ties: str = "shared",
    windows: Sequence[str] = ("all",),
    board_id: str | None = None,
) -> Board:
    """Create a board through the API and return it as the service holds it."""
    board_id = board_id or f"b{next(_board_numbers)}"
    answer = await client.post(
        "/v1/leaderboards",
        json={"id": board_id, "order": order, "ties": ties, "windows": list(windows)},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text
    conn = await asyncpg.connect(client.app.state.services.settings.database_url)
    try:
        return (await boards.load_all(conn))[board_id]
    finally:
        await conn.close()


async def seed(
    pg: asyncpg.Connection,
    redis: Redis,
    board: Board,
    seeds: Sequence[Seed],
    window: Window = "all",
    period: str = "all",
    *,
    to_redis: bool = True,
) -> None:
    """Upsert rows in Postgres, then apply the same rows to Redis (as the consumer does)."""
    await pg.executemany(
        """
        INSERT INTO player_scores (board_id, window_name, period, player_id, score, version,
                                   reached_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (board_id, window_name, period, player_id) DO UPDATE
        SET score = EXCLUDED.score, version = EXCLUDED.version,
            reached_at = EXCLUDED.reached_at
        """,
        [
            (board.id, window, period, s.player_id, s.score, s.version, at_ms(s.reached_ms))
            for s in seeds
        ],
    )
    named = {s.player_id: s.name for s in seeds if s.name is not None}
    if named:
        await pg.executemany(
            """
            INSERT INTO players (player_id, display_name) VALUES ($1, $2)
            ON CONFLICT (player_id) DO UPDATE SET display_name = EXCLUDED.display_name
            """,
            list(named.items()),
        )
    if not to_redis:
        return
    rows = [
        rankcache.ScoreRow(
            board.id, window, period, s.player_id, s.score, s.version, at_ms(s.reached_ms)
        )
        for s in seeds
    ]
    applied = await rankcache.apply_rows(
        redis, rankcache.apply_script(redis), {board.id: board}, rows, retention=2
    )
    assert applied == len(seeds)
    if named:
        await rankcache.set_names(redis, {board.id: named})


async def remove(
    pg: asyncpg.Connection,
    redis: Redis,
    board: Board,
    player_id: str,
    version: int,
    window: Window = "all",
    period: str = "all",
) -> None:
    """A player leaves a set in both stores."""
    await pg.execute(
        "DELETE FROM player_scores WHERE board_id = $1 AND window_name = $2 AND period = $3"
        " AND player_id = $4",
        board.id,
        window,
        period,
        player_id,
    )
    removal = rankcache.Removal(board.id, window, period, player_id, version)
    await rankcache.apply_rows(
        redis, rankcache.apply_script(redis), {board.id: board}, [removal], retention=2
    )


async def drop_redis(redis: Redis, board: Board) -> None:
    """Every Redis key of the board gone, as after a Redis restart without data."""
    found = [k async for k in redis.scan_iter(match=keys.board_pattern(board.id))]
    if found:
        await redis.delete(*found)


def json_of(answer: Any) -> Any:
    return answer.json()


# --- ranks and ties ---------------------------------------------------------------------


async def test_shared_ties_get_competition_ranks_listed_by_player_id(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "desc", "shared")
    await seed(
        pg,
        redis,
        board,
        [
            Seed("zed", 50, name="Zed"),
            Seed("bob", 90),
            Seed("amy", 90, name="Amy"),
            Seed("Cat", 90),
            Seed("dan", 10),
        ],
    )
    answer = await client.get(f"/v1/leaderboards/{board.id}/top")
    assert answer.status_code == 200
    assert answer.headers["x-rankstream-source"] == "redis"
    body = answer.json()
    assert body["total"] == 5
    assert body["window"] == "all" and body["period"] == "all"
    assert body["next_cursor"] is None
    # "Cat" < "amy" < "bob" bytewise: uppercase first, as the sorted set orders them
    assert [
        (e["rank"], e["player_id"], e["score"], e["display_name"]) for e in body["entries"]
    ] == [
        (1, "Cat", 90, None),
        (1, "amy", 90, "Amy"),
        (1, "bob", 90, None),
        (4, "zed", 50, "Zed"),
        (5, "dan", 10, None),
    ]
    second = await client.get(f"/v1/leaderboards/{board.id}/top", params={"offset": 2, "limit": 2})
    assert [(e["rank"], e["player_id"]) for e in second.json()["entries"]] == [
        (1, "bob"),
        (4, "zed"),
    ]
    me = await client.get(f"/v1/leaderboards/{board.id}/players/bob")
    assert me.status_code == 200
    assert me.json() == {
        "player_id": "bob",
        "window": "all",
        "period": "all",
        "rank": 1,
        "score": 90,
        "total": 5,
        "percentile": 100.0,
        "display_name": None,
    }
    last = (await client.get(f"/v1/leaderboards/{board.id}/players/dan")).json()
    assert (last["rank"], last["percentile"]) == (5, 20.0)


async def test_earliest_ties_rank_the_first_to_reach_a_score_first_on_asc_board(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "asc", "earliest")
    await seed(
        pg,
        redis,
        board,
        [
            Seed("late", 300, reached_ms=T0 + 5_000),
            Seed("early", 300, reached_ms=T0 + 1_000),
            Seed("b-same-ms", 300, reached_ms=T0 + 3_000),
            Seed("a-same-ms", 300, reached_ms=T0 + 3_000),
            Seed("fast", 120, reached_ms=T0 + 9_000),
            Seed("slow", 999, reached_ms=T0),
        ],
    )
    body = (await client.get(f"/v1/leaderboards/{board.id}/top")).json()
    assert [(e["rank"], e["player_id"], e["score"]) for e in body["entries"]] == [
        (1, "fast", 120),
        (2, "early", 300),
        (3, "a-same-ms", 300),
        (4, "b-same-ms", 300),
        (5, "late", 300),
        (6, "slow", 999),
    ]
    around = await client.get(
        f"/v1/leaderboards/{board.id}/players/a-same-ms/around", params={"radius": 1}
    )
    assert [e["player_id"] for e in around.json()["entries"]] == [
        "early",
        "a-same-ms",
        "b-same-ms",
    ]
    assert [e["rank"] for e in around.json()["entries"]] == [2, 3, 4]


async def test_consumer_contract_player_rank(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "desc", "shared")
    assert await ranking.player_rank(redis, board, "all", "all", "p1") is None  # no set yet
    await seed(pg, redis, board, [Seed("p1", 5), Seed("p2", 7), Seed("p3", 5)])
    mine = await ranking.player_rank(redis, board, "all", "all", "p3")
    assert mine is not None
    assert (mine.rank, mine.score, mine.total) == (2, 5, 3)
    assert await ranking.player_rank(redis, board, "all", "all", "nobody") is None
    from_pg = await pgranking.player_rank(pg, board, "all", "all", "p3")
    assert from_pg == mine


async def test_removed_player_is_unranked_everywhere(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "desc", "earliest")
    await seed(pg, redis, board, [Seed("a", 1), Seed("b", 2), Seed("c", 3)])
    await remove(pg, redis, board, "b", version=2)
    assert (await client.get(f"/v1/leaderboards/{board.id}/players/b")).status_code == 404
    ranks = await client.post(
        f"/v1/leaderboards/{board.id}/ranks", json={"player_ids": ["a", "b", "c"]}
    )
    assert ranks.status_code == 200
    assert [(e["player_id"], e["rank"]) for e in ranks.json()["entries"]] == [("c", 1), ("a", 2)]
    assert ranks.json()["missing"] == ["b"]


# --- validation and errors ----------------------------------------------------------------


async def test_bad_parameters_are_422_problems_naming_the_field(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, windows=("daily", "all"))
    await seed(pg, redis, board, [Seed("p", 1)])
    top = f"/v1/leaderboards/{board.id}/top"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (top, {"window": "weekly"}, "window"),  # a window, but not this board's
        (top, {"window": "yearly"}, "window"),
        (top, {"period": "2026-W47"}, "period"),  # not a daily period id
        (top, {"window": "all", "period": "2026-01-01"}, "period"),
        (top, {"window": "daily", "period": "2026-02-30"}, "period"),
        (top, {"limit": 0}, "limit"),
        (top, {"limit": 101}, "limit"),
        (top, {"limit": "ten"}, "limit"),
        (top, {"offset": -1}, "offset"),
        (top, {"cursor": "not-a-cursor"}, "cursor"),
        (top, {"cursor": ranking.encode_cursor(1, "p"), "offset": 3}, "cursor"),
        (f"/v1/leaderboards/{board.id}/players/p/around", {"radius": 51}, "radius"),
        (f"/v1/leaderboards/{board.id}/players/p", {"period": "yesterday"}, "period"),
    ]
    for path, params, field in cases:
        answer = await client.get(path, params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["field"] == field, (params, answer.json())

    too_many = await client.post(
        f"/v1/leaderboards/{board.id}/ranks", json={"player_ids": [f"p{i}" for i in range(101)]}
    )
    assert too_many.status_code == 422
    assert too_many.json()["field"] == "player_ids"
    bad_window = await client.post(
        f"/v1/leaderboards/{board.id}/ranks", params={"window": "monthly"}, json={"player_ids": []}
    )
    assert bad_window.status_code == 422 and bad_window.json()["field"] == "window"


async def test_unknown_board_and_unranked_player_are_404_problems(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    for path in ("/v1/leaderboards/nope/top", "/v1/leaderboards/nope"):
        missing = await client.get(path)
        assert missing.status_code == 404
        assert missing.json()["title"] == "Unknown leaderboard"
        assert missing.json()["field"] == "board_id"  # the path parameter, as /schema says
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("p", 1)])
    for path in (
        f"/v1/leaderboards/{board.id}/players/q",
        f"/v1/leaderboards/{board.id}/players/q/around",
    ):
        answer = await client.get(path)
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["field"] == "player_id"


async def test_current_period_without_players_is_empty_not_an_error(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, windows=("all", "weekly"))
    await seed(pg, redis, board, [Seed("p", 1)])  # Redis knows the board (revision counter)
    empty = await client.get(f"/v1/leaderboards/{board.id}/top", params={"window": "weekly"})
    assert empty.status_code == 200
    assert empty.headers["x-rankstream-source"] == "redis"
    body = empty.json()
    assert body["total"] == 0 and body["entries"] == [] and body["next_cursor"] is None
    assert body["period"] == periods.period_id("weekly", datetime.now(UTC))
    ranks = await client.post(
        f"/v1/leaderboards/{board.id}/ranks",
        params={"window": "weekly"},
        json={"player_ids": ["p", "p"]},
    )
    assert ranks.json()["entries"] == [] and ranks.json()["missing"] == ["p"]
    # a brand-new board Redis has never seen: answered (empty) from Postgres, never a 500
    fresh = await make_board(client)
    answer = await client.get(f"/v1/leaderboards/{fresh.id}/top")
    assert answer.status_code == 200
    assert answer.json()["total"] == 0
    assert answer.headers["x-rankstream-source"] == "postgres"


async def test_a_board_shows_each_windows_current_period_reset_and_players(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, windows=("all", "daily", "weekly", "monthly"))
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    monday = midnight - timedelta(days=midnight.weekday())
    first = midnight.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    today, this_week = now.strftime("%Y-%m-%d"), now.strftime("%G-W%V")
    last_week = (now - timedelta(days=7)).strftime("%G-W%V")
    await seed(pg, redis, board, [Seed("a", 3), Seed("b", 2), Seed("c", 1)])
    await seed(pg, redis, board, [Seed("a", 3), Seed("b", 2)], "daily", today)
    # last week's players are not this week's
    await seed(pg, redis, board, [Seed("a", 5)], "weekly", last_week, to_redis=False)
    answer = await client.get(f"/v1/leaderboards/{board.id}")
    assert answer.status_code == 200
    shown = {p["window"]: p for p in answer.json()["periods"]}
    assert list(shown) == ["all", "daily", "weekly", "monthly"]

    def at(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    expected = {
        "all": ("all", board.created_at, None, 3),
        "daily": (today, midnight, midnight + timedelta(days=1), 2),
        "weekly": (this_week, monday, monday + timedelta(days=7), 0),
        "monthly": (now.strftime("%Y-%m"), first, next_month, 0),
    }
    for window, (period, starts, resets, players) in expected.items():
        got = shown[window]
        assert (got["period"], at(got["starts_at"]), at(got["resets_at"]), got["players"]) == (
            period,
            starts,
            resets,
            players,
        ), window


# --- conditional GET --------------------------------------------------------------------


async def test_etag_round_trip_304_and_change(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    settings: Settings,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed("a", 10), Seed("b", 20)])
    path = f"/v1/leaderboards/{board.id}/top"
    first = await client.get(path, params={"limit": 5})
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert first.headers["cache-control"] == f"public, max-age={settings.cache_max_age}"

    again = await client.get(path, params={"limit": 5}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    listed = await client.get(
        path, params={"limit": 5}, headers={"If-None-Match": f'"other", {etag}'}
    )
    assert listed.status_code == 304

    other_query = await client.get(path, params={"limit": 1}, headers={"If-None-Match": etag})
    assert other_query.status_code == 200
    assert other_query.headers["etag"] != etag

    await seed(pg, redis, board, [Seed("a", 30, version=2)])
    changed = await client.get(path, params={"limit": 5}, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["entries"][0]["player_id"] == "a"

    me = await client.get(f"/v1/leaderboards/{board.id}/players/a")
    unchanged = await client.get(
        f"/v1/leaderboards/{board.id}/players/a", headers={"If-None-Match": me.headers["etag"]}
    )
    assert unchanged.status_code == 304


# --- Postgres: past periods and fallback ----------------------------------------------------


async def test_past_period_is_served_from_postgres(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "desc", "shared", windows=("daily",))
    now = datetime.now(UTC)
    previous = periods.previous("daily", periods.period_id("daily", now))
    seeds = [Seed("a", 5, name="A"), Seed("b", 9), Seed("c", 5)]
    # long expired: apply_rows sets an expiry in the past, so Redis drops the set at once
    await seed(pg, redis, board, seeds, "daily", "2020-01-01")
    assert not await redis.exists(keys.set_key(board.id, "daily", "2020-01-01"))
    old = await client.get(f"/v1/leaderboards/{board.id}/top", params={"period": "2020-01-01"})
    assert old.status_code == 200
    assert old.headers["x-rankstream-source"] == "postgres"
    assert [(e["rank"], e["player_id"], e["display_name"]) for e in old.json()["entries"]] == [
        (1, "b", None),
        (2, "a", "A"),
        (2, "c", None),
    ]
    assert old.json()["period"] == "2020-01-01"

    # the previous period while still retained: from Redis, and identical from Postgres
    await seed(pg, redis, board, seeds, "daily", previous)
    live = await client.get(f"/v1/leaderboards/{board.id}/top", params={"period": "previous"})
    assert live.headers["x-rankstream-source"] == "redis"
    assert live.json()["period"] == previous
    assert live.json()["entries"] == old.json()["entries"]
    await redis.delete(keys.set_key(board.id, "daily", previous))
    gone = await client.get(f"/v1/leaderboards/{board.id}/top", params={"period": "previous"})
    assert gone.headers["x-rankstream-source"] == "postgres"
    assert gone.json() == live.json()


async def test_partial_sets_of_a_board_redis_lost_are_not_read(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client)
    await seed(pg, redis, board, [Seed(f"p{i}", 10 * i, name=f"P{i}") for i in range(6)])
    base = f"/v1/leaderboards/{board.id}"
    requests: list[tuple[str, str, dict[str, Any], Any]] = [
        ("GET", f"{base}/top", {}, None),
        ("GET", f"{base}/players/p2", {}, None),
        ("GET", f"{base}/players/p2/around", {"radius": 1}, None),
        ("POST", f"{base}/ranks", {}, {"player_ids": ["p5", "p2"]}),
    ]

    async def answers() -> list[tuple[str, Any]]:
        out = []
        for method, path, params, body in requests:
            answer = await client.request(method, path, params=params, json=body)
            assert answer.status_code == 200, answer.text
            out.append((answer.headers["x-rankstream-source"], answer.json()))
        return out

    complete = await answers()
    assert {source for source, _ in complete} == {"redis"}
    # Redis restarts empty, and a consumer's write recreates the set with one player in it
    # before the recovery has rebuilt the rest: that set must not be answered from.
    await redis.flushall()
    await seed(pg, redis, board, [Seed("p2", 20, version=2, name="P2")])
    assert await redis.zcard(keys.set_key(board.id, "all", "all")) == 1
    for marker in (None, "pending:recovering"):
        if marker is not None:
            await redis.set(coldstart.marker_key(board.id), marker)
        during = await answers()
        assert [source for source, _ in during] == ["postgres"] * len(requests), marker
        assert [answer for _, answer in during] == [answer for _, answer in complete]
    # the recovery has rebuilt the board and marked it done: Redis answers again
    await seed(pg, redis, board, [Seed(f"p{i}", 10 * i, name=f"P{i}") for i in range(6) if i != 2])
    await redis.set(coldstart.marker_key(board.id), "done:recovered")
    assert await answers() == complete


async def test_redis_unreachable_answers_from_postgres(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
    settings: Settings,
) -> None:
    board = await make_board(client, "asc", "earliest")
    await seed(
        pg,
        redis,
        board,
        [Seed(f"p{i}", i % 3, reached_ms=T0 + i, name=f"P{i}") for i in range(12)],
    )
    base = f"/v1/leaderboards/{board.id}"
    requests: list[tuple[str, str, dict[str, Any], Any]] = [
        ("GET", f"{base}/top", {"limit": 4, "offset": 3}, None),
        ("GET", f"{base}/players/p7", {}, None),
        ("GET", f"{base}/players/p0/around", {"radius": 2}, None),
        ("POST", f"{base}/ranks", {}, {"player_ids": ["p11", "zz", "p1"]}),
    ]
    healthy = [
        await client.request(method, path, params=params, json=body)
        for method, path, params, body in requests
    ]
    services = client.app.state.services
    working, reads = services.redis, services.reads
    services.redis = redis_client(settings, url="redis://127.0.0.1:1/0")  # nothing listens
    services.reads = ReadLink("redis://127.0.0.1:1/0")
    try:
        degraded = [
            await client.request(method, path, params=params, json=body)
            for method, path, params, body in requests
        ]
    finally:
        await services.redis.aclose()
        await services.reads.aclose()
        services.redis, services.reads = working, reads
    for good, bad in zip(healthy, degraded, strict=True):
        assert good.status_code == 200 and bad.status_code == 200, bad.text
        assert good.headers["x-rankstream-source"] == "redis"
        assert bad.headers["x-rankstream-source"] == "postgres"
        assert good.json() == bad.json()
    assert (await client.get(f"{base}/players/zz")).status_code == 404


async def test_reads_can_require_a_key(settings: Settings, pg: asyncpg.Connection) -> None:
    from service import apikeys

    await apikeys.store(pg, ADMIN_KEY, "admin", "tests")
    private = msgspec.structs.replace(settings, public_reads=False)
    async with AsyncTestClient(app=create_app(private)) as client:
        board = await make_board(client)
        anonymous = await client.get(f"/v1/leaderboards/{board.id}/top")
        assert anonymous.status_code == 401
        keyed = await client.get(f"/v1/leaderboards/{board.id}/top", headers=ADMIN)
        assert keyed.status_code == 200


async def test_openapi_documents_the_read_routes(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    paths: Mapping[str, Any] = schema["paths"]
    top = paths["/v1/leaderboards/{board_id}/top"]["get"]
    assert top["summary"]
    names = {p["name"] for p in top["parameters"]}
    assert {"window", "period", "limit", "offset", "cursor"} <= names
    assert {"200", "304", "404", "422"} <= set(top["responses"])
    assert "/v1/leaderboards/{board_id}/players/{player_id}/around" in paths
    assert "/v1/leaderboards/{board_id}/ranks" in paths
    entry = schema["components"]["schemas"]["RankedEntry"]
    assert entry["properties"]["score"]["examples"]


async def test_cursor_continues_after_a_page_whose_last_player_left(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    redis: Redis,
) -> None:
    board = await make_board(client, "desc", "shared")
    await seed(pg, redis, board, [Seed(p, 10) for p in "abcdef"] + [Seed("top", 99)])
    path = f"/v1/leaderboards/{board.id}/top"
    first = (await client.get(path, params={"limit": 3})).json()
    assert [e["player_id"] for e in first["entries"]] == ["top", "a", "b"]
    await remove(pg, redis, board, "b", version=2)  # the cursor's own player leaves
    await seed(pg, redis, board, [Seed("a", 1, version=2), Seed("bb", 10)])  # a drops, bb joins
    cursor = first["next_cursor"]
    second = (await client.get(path, params={"limit": 3, "cursor": cursor})).json()
    assert [(e["rank"], e["player_id"]) for e in second["entries"]] == [
        (2, "bb"),
        (2, "c"),
        (2, "d"),
    ]
    await drop_redis(redis, board)
    from_pg = await client.get(path, params={"limit": 3, "cursor": cursor})
    assert from_pg.headers["x-rankstream-source"] == "postgres"
    assert from_pg.json() == second
