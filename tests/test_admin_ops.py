"""Operator commands: dead letters (list, replay once), API keys (list, revoke), rebuild
--from-events after an operator change, and detaching old score_events partitions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import keys, periods, stream
from service.app import create_app
from service.models import ScoreEvent
from service.settings import Settings
from tests.conftest import settings_env
from tests.support import ADMIN, Model, drained, pg_set, redis_set
from tests.test_rebuild import make_board


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- dead letters ---------------------------------------------------------------------------


async def test_dead_letter_of_an_unknown_board_replays_once_after_the_board_exists(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    spawn("consume", env_overrides={"RANKSTREAM_MAX_DELIVERIES": "1"})
    now_ms = int(time.time() * 1000)
    event = ScoreEvent("dl-1", "later", "alice", 5, now_ms, display_name="Alice")
    await redis.xadd(settings.stream_key, {stream.FIELD: stream.encode(event)})
    await redis.xadd(settings.stream_key, {stream.FIELD: b"\xc1not msgpack"})

    async def both_dead() -> bool:
        return int(await pg.fetchval("SELECT count(*) FROM dead_letters")) == 2

    await wait_for(both_dead)
    listed = cli(settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "later/alice score=5 event=dl-1" in listed.stdout
    assert "undecodable" in listed.stdout
    answer = await client.get("/v1/admin/dead-letters", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    letters = answer.json()["dead_letters"]
    good = next(d for d in letters if d["event_id"] == "dl-1")
    bad = next(d for d in letters if d["event_id"] is None)
    assert good["board_id"] == "later" and good["replayed_at"] is None
    assert (await client.get("/v1/admin/dead-letters")).status_code == 401

    spec = await make_board(client, "later", operator="increment", windows=["all"])
    replayed = cli(settings, "dlq", "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 1: {good['id']}" in replayed.stdout
    assert f"left alone (undecodable): {bad['id']}" in replayed.stdout
    await drained(redis, settings)

    async def applied() -> bool:
        return await pg_set(pg, "later", "all", "all") == {"alice": 5}

    await wait_for(applied, 10)
    assert await redis_set(redis, spec, "all", "all") == {"alice": 5}
    # replaying again (by id, through the route) sends it again and changes nothing
    again = await client.post(
        "/v1/admin/dead-letters/replay", json={"ids": [good["id"], 999]}, headers=ADMIN
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"replayed": [good["id"]], "undecodable": [], "not_found": [999]}
    # nothing left that was never replayed
    assert "replayed 0" in cli(settings, "dlq", "replay").stdout
    await drained(redis, settings)
    await asyncio.sleep(0.3)
    assert await pg_set(pg, "later", "all", "all") == {"alice": 5}
    assert await redis_set(redis, spec, "all", "all") == {"alice": 5}
    assert await pg.fetchval("SELECT count(*) FROM score_events") == 1
    assert await pg.fetchval("SELECT count(*) FROM dead_letters") == 2  # no new poison
    listed_all = await client.get("/v1/admin/dead-letters?replayed=true", headers=ADMIN)
    replayed_state = {
        d["id"]: d["replayed_at"] is not None for d in listed_all.json()["dead_letters"]
    }
    assert replayed_state == {good["id"]: True, bad["id"]: False}
    assert (await client.get("/v1/admin/dead-letters", headers=ADMIN)).json()["dead_letters"] == [
        msgspec.json.decode(msgspec.json.encode(bad))
    ]
    empty = await client.post("/v1/admin/dead-letters/replay", json={"ids": []}, headers=ADMIN)
    assert empty.status_code == 422


# --- API keys --------------------------------------------------------------------------------


async def test_revoked_key_is_refused_once_the_cache_forgets_it(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    made = cli(settings, "keys", "create", "--role", "client", "--name", "game-server")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("rs_")
    listed = cli(settings, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    found = msgspec.json.decode(listed.stdout)
    mine = next(k for k in found if k["name"] == "game-server")
    assert mine["role"] == "client" and mine["revoked_at"] is None
    assert key not in listed.stdout and "key_hash" not in listed.stdout
    assert "game-server" in cli(settings, "keys", "list").stdout

    fast = msgspec.structs.replace(settings, key_cache_ttl_s=0.5)
    async with AsyncTestClient(app=create_app(fast)) as client:
        await make_board(client, "k1", windows=["all"])
        auth = {"Authorization": f"Bearer {key}"}
        body = {"player_id": "p1", "score": 1}
        first = await client.post("/v1/leaderboards/k1/scores", json=body, headers=auth)
        assert first.status_code == 202, first.text
        revoked = cli(settings, "keys", "revoke", str(mine["id"]))
        assert revoked.returncode == 0, revoked.stderr
        assert f"key {mine['id']} revoked" in revoked.stdout
        await asyncio.sleep(0.6)
        refused = await client.post("/v1/leaderboards/k1/scores", json=body, headers=auth)
        assert refused.status_code == 401, refused.text
    assert "already revoked" in cli(settings, "keys", "revoke", str(mine["id"])).stdout
    assert cli(settings, "keys", "revoke", "99999").returncode == 1
    assert cli(settings, "keys", "revoke").returncode == 2
    assert cli(settings, "keys", "create").returncode == 2
    row = await pg.fetchrow("SELECT revoked_at FROM api_keys WHERE id = $1", mine["id"])
    assert row is not None and row["revoked_at"] is not None


# --- rebuild --from-events -------------------------------------------------------------------


async def test_rebuild_from_events_applies_the_new_operator(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
    settings: Settings,
    spawn: Any,
) -> None:
    spawn("consume")
    spec = await make_board(client, "ops", operator="best", windows=["all", "daily"])
    items = [
        {"board_id": "ops", "player_id": f"p{i % 37}", "score": (i * 7919) % 1000 - 300,
         "event_id": f"ops-{i}"}
        for i in range(400)
    ]  # fmt: skip
    for start in range(0, len(items), 200):
        answer = await client.post(
            "/v1/scores/batch", json={"submissions": items[start : start + 200]}, headers=ADMIN
        )
        assert answer.status_code == 202, answer.text
    await drained(redis, settings)
    today = periods.period_id("daily", datetime.now(UTC))
    versions_key = keys.versions_key("ops", "all", "all")
    old_versions = {k.decode(): int(v) for k, v in (await redis.hgetall(versions_key)).items()}  # type: ignore[union-attr]
    # the operator changes in Postgres: every score becomes the sum of the player's events
    await pg.execute("UPDATE leaderboards SET operator = 'increment' WHERE id = 'ops'")
    done = cli(settings, "rebuild", "ops", "--from-events")
    assert done.returncode == 0, done.stderr
    assert "recomputed 74 rows (were 74) from 400 events" in done.stdout
    model = Model(boards={"ops": {**spec, "operator": "increment"}})
    for row in await pg.fetch("SELECT event_id, player_id, score, accepted_at FROM score_events"):
        ms = int(row["accepted_at"].timestamp() * 1000)
        model.submit("ops", row["player_id"], row["score"], row["event_id"], ms)
    for window, period in (("all", "all"), ("daily", today)):
        expected = model.set_of("ops", window, period)
        assert await pg_set(pg, "ops", window, period) == expected
        assert await redis_set(redis, spec, window, period) == expected
    new_versions = {k.decode(): int(v) for k, v in (await redis.hgetall(versions_key)).items()}  # type: ignore[union-attr]
    assert min(new_versions.values()) > max(old_versions.values())
    # later submissions use the new operator on top of the recomputed rows
    await asyncio.sleep(settings.board_cache_ttl_s)  # the consumer's board cache
    await client.post(
        "/v1/leaderboards/ops/scores", json={"player_id": "p1", "score": 1000}, headers=ADMIN
    )
    await drained(redis, settings)

    async def added() -> bool:
        got = await pg_set(pg, "ops", "all", "all")
        return got["p1"] == model.set_of("ops", "all", "all")["p1"] + 1000

    await wait_for(added, 10)
    assert await redis_set(redis, spec, "all", "all") == await pg_set(pg, "ops", "all", "all")


# --- partitions -----------------------------------------------------------------------------


def month_back(now: datetime, months: int) -> str:
    year, month = now.year, now.month - months
    while month <= 0:
        year, month = year - 1, month + 12
    return f"{year:04d}-{month:02d}"


async def test_detach_old_partitions_keeps_them_as_plain_tables(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pg: asyncpg.Connection,
    settings: Settings,
) -> None:
    now = datetime.now(UTC)
    await pg.execute("SELECT rankstream_ensure_partitions(now() - interval '5 months', 2)")
    for months in (5, 4, 3):
        at = f"{month_back(now, months)}-10T12:00:00+00:00"
        await pg.execute(
            "INSERT INTO score_events (event_id, board_id, player_id, score, accepted_at)"
            " VALUES ($1, 'old', 'p', 1, $2::timestamptz)",
            f"e{months}",
            datetime.fromisoformat(at),
        )

    def attached() -> Any:
        return pg.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'score_events'::regclass ORDER BY 1"
        )

    before = {r["relname"] for r in await attached()}
    table = {m: "score_events_" + month_back(now, m).replace("-", "_") for m in (5, 4, 3)}
    assert set(table.values()) <= before
    dry = cli(settings, "partitions", "detach", "--before", month_back(now, 3), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would detach {table[5]}" in dry.stdout and table[3] not in dry.stdout
    assert {r["relname"] for r in await attached()} == before
    done = cli(settings, "partitions", "detach", "--before", month_back(now, 3))
    assert done.returncode == 0, done.stderr
    assert f"detached {table[5]} ({month_back(now, 5)}, 1 events)" in done.stdout
    after = {r["relname"] for r in await attached()}
    assert after == before - {table[5], table[4]}
    # plain tables with their rows, out of score_events
    assert await pg.fetchval(f"SELECT count(*) FROM {table[4]}") == 1
    assert await pg.fetchval("SELECT count(*) FROM score_events") == 1
    # recent months are refused, and so is nonsense
    assert cli(settings, "partitions", "detach", "--before", month_back(now, 0)).returncode == 2
    assert cli(settings, "partitions", "detach", "--before", "2026-13").returncode == 2
    # a recompute from events would now lose the archived months: refused
    await make_board(client, "arch", windows=["all"])
    refused = cli(settings, "rebuild", "arch", "--from-events")
    assert refused.returncode == 1 and "detached partitions" in refused.stderr


async def test_rebuild_route_with_from_events_recomputes_in_the_job(
    client: AsyncTestClient,  # type: ignore[type-arg]
    redis: Redis,
    pg: asyncpg.Connection,
) -> None:
    spec = await make_board(client, "rt", operator="latest", windows=["all"])
    # two events per player, applied under `latest`: the second score counts
    now = datetime.now(UTC)
    for player, scores in {"a": (10, 3), "b": (4, 8)}.items():
        for n, score in enumerate(scores):
            await pg.execute(
                "INSERT INTO score_events (event_id, board_id, player_id, score, accepted_at)"
                " VALUES ($1, 'rt', $2, $3, $4)",
                f"{player}{n}",
                player,
                score,
                now.replace(microsecond=n * 1000),
            )
        await pg.execute(
            "INSERT INTO player_scores (board_id, window_name, period, player_id, score,"
            " version, reached_at) VALUES ('rt', 'all', 'all', $1, $2, 2, $3)",
            player,
            scores[1],
            now,
        )
    await pg.execute("UPDATE leaderboards SET operator = 'increment' WHERE id = 'rt'")
    bad = await client.post(
        "/v1/admin/leaderboards/rt/rebuild?from_events=true&window=all", headers=ADMIN
    )
    assert bad.status_code == 422
    started = await client.post("/v1/admin/leaderboards/rt/rebuild?from_events=true", headers=ADMIN)
    assert started.status_code == 202, started.text

    async def done() -> bool:
        job = (await client.get(started.json()["status_url"], headers=ADMIN)).json()
        assert job["state"] != "failed", job
        return bool(job["state"] == "done")

    await wait_for(done, 10)
    assert await pg_set(pg, "rt", "all", "all") == {"a": 13, "b": 12}
    assert await redis_set(redis, spec, "all", "all") == {"a": 13, "b": 12}
    assert await pg.fetchval("SELECT min(version) FROM player_scores WHERE board_id = 'rt'") == 3
