"""Migrations on scratch databases of the session's PostgreSQL: once, concurrently, atomically."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from service import embedded, migrations

if TYPE_CHECKING:
    from tests.conftest import Servers

_numbers = itertools.count(1)
TABLES = {"leaderboards", "score_events", "event_ids", "player_scores", "players", "api_keys"}


@pytest.fixture
async def scratch_url(servers: Servers) -> AsyncIterator[str]:
    """URL of an empty database, dropped afterwards."""
    name = f"migrate_{os.getpid()}_{next(_numbers)}"
    admin_url = embedded.postgres_url(servers.postgres.port, "postgres")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield embedded.postgres_url(servers.postgres.port, name)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _recorded(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(r["version"], r["name"]) for r in rows]


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_migration_files_are_found() -> None:
    found = migrations.load()
    assert found, "no migrations in sql/"
    assert found[0].version == "001"
    assert [m.version for m in found] == sorted({m.version for m in found})


async def test_migrate_is_idempotent(scratch_url: str) -> None:
    every = [m.name for m in migrations.load()]
    assert await migrations.migrate(scratch_url) == every
    tables = await _tables(scratch_url)
    assert tables >= TABLES | {"schema_migrations"}
    recorded = await _recorded(scratch_url)
    assert recorded == [(m.version, m.name) for m in migrations.load()]

    assert await migrations.migrate(scratch_url) == []
    assert await _recorded(scratch_url) == recorded
    assert await _tables(scratch_url) == tables


async def test_concurrent_migrations_apply_each_once(scratch_url: str) -> None:
    every = [m.name for m in migrations.load()]
    first, second = await asyncio.wait_for(
        asyncio.gather(migrations.migrate(scratch_url), migrations.migrate(scratch_url)),
        timeout=60,
    )
    # One of them applied everything, the other waited for the lock and found nothing to do.
    assert sorted([first, second], key=len) == [[], every]
    conn = await asyncpg.connect(scratch_url)
    try:
        counts = await conn.fetch("SELECT version, count(*) AS n FROM schema_migrations GROUP BY 1")
        # The lock is released: it can be taken at once from another session.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", migrations.LOCK_KEY)
    finally:
        await conn.close()
    assert {r["version"]: r["n"] for r in counts} == {m.version: 1 for m in migrations.load()}


async def test_failed_migration_leaves_nothing_of_itself(scratch_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    shutil.copy(migrations.sql_dir() / "001_init.sql", folder / "001_init.sql")
    (folder / "002_broken.sql").write_text(
        "CREATE TABLE half_made (id int PRIMARY KEY);\n"
        "INSERT INTO half_made VALUES (1);\n"
        "ALTER TABLE leaderboards ADD COLUMN half_made_column int;\n"
        "SELECT * FROM table_that_does_not_exist;\n"
    )
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrations.migrate(scratch_url, folder)

    assert await _recorded(scratch_url) == [("001", "001_init")]
    tables = await _tables(scratch_url)
    assert "half_made" not in tables
    assert tables >= TABLES
    conn = await asyncpg.connect(scratch_url)
    try:
        column = await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'leaderboards' AND column_name = 'half_made_column'"
        )
        assert column == 0
        # The failed run released its advisory lock.
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", migrations.LOCK_KEY)
        await conn.execute("SELECT pg_advisory_unlock($1)", migrations.LOCK_KEY)
    finally:
        await conn.close()

    # Fixed, the next run applies only the fixed 002.
    (folder / "002_broken.sql").write_text("CREATE TABLE half_made (id int PRIMARY KEY);\n")
    applied = await asyncio.wait_for(migrations.migrate(scratch_url, folder), timeout=30)
    assert applied == ["002_broken"]
    assert await _recorded(scratch_url) == [("001", "001_init"), ("002", "002_broken")]
    assert "half_made" in await _tables(scratch_url)


async def test_score_events_partitions_exist_for_this_month_and_ahead(scratch_url: str) -> None:
    await migrations.migrate(scratch_url)
    conn = await asyncpg.connect(scratch_url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'score_events'::regclass"
        )
        partitions = {r["relname"] for r in rows}
        now = datetime.now(UTC)
        months = []
        for ahead in range(3):
            year, month = divmod(now.month - 1 + ahead, 12)
            months.append(f"score_events_{now.year + year}_{month + 1:02d}")
        assert set(months) <= partitions
        assert "score_events_default" in partitions

        # An event accepted now lands in this month's partition, not the default one.
        await conn.execute(
            "INSERT INTO score_events (event_id, board_id, player_id, score, accepted_at)"
            " VALUES ('e1', 'b', 'p', 1, now())"
        )
        home = await conn.fetchval("SELECT tableoid::regclass::text FROM score_events")
        assert home == months[0]

        # Making partitions ahead is repeatable: existing ones are kept, one more is added.
        assert await conn.fetchval("SELECT rankstream_ensure_partitions(now(), 2)") == 0
        assert await conn.fetchval("SELECT rankstream_ensure_partitions(now(), 3)") == 1
    finally:
        await conn.close()
