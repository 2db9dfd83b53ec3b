"""What a batch does to the players table: a display name or metadata given replaces the
stored one, one not given keeps it, and a row is rewritten only when it changes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from consumers.pipeline import Entry, Pipeline
from service import boards, keys, scores, stream
from service.connections import pg_pool
from service.models import BoardCreate, ScoreEvent
from service.settings import Settings

NAME = 'Zoë "Z" \\ ☃\ttab'  # escapes of JSON, of COPY text, and a non-ASCII letter


@pytest.fixture
async def pipeline(settings: Settings, redis: Redis) -> AsyncIterator[Pipeline]:
    pool = await pg_pool(settings)
    await boards.create(pool, BoardCreate(id="b", windows=["all"]))
    made = Pipeline(settings, redis, pool)
    yield made
    await pool.close()


def _entry(player: str, name: str | None, metadata: dict[str, Any] | None) -> Entry:
    event = ScoreEvent(
        event_id=str(uuid.uuid4()),
        board_id="b",
        player_id=player,
        score=1,
        accepted_ms=scores.now_ms(),
        display_name=name,
        metadata=json.dumps(metadata).encode() if metadata is not None else None,
    )
    return (b"1-1", {stream.FIELD: stream.encode(event)})


async def _row(pg: asyncpg.Connection, player: str) -> tuple[str | None, Any, int]:
    """(display name, metadata, xmin): xmin changes with every new version of the row."""
    r = await pg.fetchrow(
        "SELECT display_name, metadata, xmin::text::bigint AS xmin FROM players"
        " WHERE player_id = $1",
        player,
    )
    assert r is not None
    return r["display_name"], json.loads(r["metadata"]), r["xmin"]


async def _locked(pg: asyncpg.Connection, player: str) -> bool:
    """Whether a transaction has locked or deleted the row's current version (xmax set)."""
    xmax = await pg.fetchval("SELECT xmax::text FROM players WHERE player_id = $1", player)
    return bool(xmax != "0")


async def test_names_and_metadata_replace_or_keep_and_unchanged_rows_are_not_rewritten(
    pipeline: Pipeline, pg: asyncpg.Connection, redis: Redis
) -> None:
    await pipeline.process([_entry("p1", NAME, {"lvl": 1, "tag": "é"})])
    name, metadata, first = await _row(pg, "p1")
    assert (name, metadata) == (NAME, {"lvl": 1, "tag": "é"})
    assert (await redis.hget(keys.names_key("b"), "p1")).decode() == NAME

    # Nothing given, or the same again: the row stays as it is, neither rewritten nor
    # locked (ON CONFLICT would lock it even when its WHERE leaves it alone).
    await pipeline.process([_entry("p1", None, None)])
    await pipeline.process([_entry("p1", NAME, {"tag": "é", "lvl": 1})])
    assert await _row(pg, "p1") == (NAME, {"lvl": 1, "tag": "é"}, first)
    assert not await _locked(pg, "p1")

    # A new name keeps the metadata; new metadata keeps the name.
    await pipeline.process([_entry("p1", "B", None)])
    name, metadata, renamed = await _row(pg, "p1")
    assert (name, metadata) == ("B", {"lvl": 1, "tag": "é"}) and renamed != first
    await pipeline.process([_entry("p1", None, {"lvl": 2})])
    name, metadata, _ = await _row(pg, "p1")
    assert (name, metadata) == ("B", {"lvl": 2})
    assert (await redis.hget(keys.names_key("b"), "p1")).decode() == "B"

    # Metadata alone makes a row with no name; a batch's last name of a player wins.
    await pipeline.process([_entry("p2", None, {"k": [1, None]}), _entry("p3", "C", None)])
    await pipeline.process([_entry("p3", "D", None), _entry("p3", "E", None)])
    assert (await _row(pg, "p2"))[:2] == (None, {"k": [1, None]})
    assert (await _row(pg, "p3"))[0] == "E"
