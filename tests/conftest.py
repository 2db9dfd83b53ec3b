"""Test session: one embedded Redis and one embedded PostgreSQL, started by the same launcher
as `rankstream up`; every test gets a fresh database (cloned from a migrated template) and
an empty keyspace."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service import embedded, migrations
from service.app import create_app
from service.connections import redis_client
from service.settings import Settings
from tests.support import ADMIN_KEY

TEMPLATE_DB = "rankstream_template"
TEST_LIMIT = "100000/minute"

_db_numbers = itertools.count(1)


class Servers(msgspec.Struct, frozen=True):
    """The session's embedded servers."""

    data_dir: Path
    redis: embedded.RunningServer
    postgres: embedded.RunningServer


def _scrubbed_environ() -> None:
    # Settings must come from the fixtures, not from whoever runs the tests.
    for key in [k for k in os.environ if k.startswith("RANKSTREAM_")]:
        del os.environ[key]


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    _scrubbed_environ()
    data_dir = tmp_path_factory.mktemp("embedded")
    redis = embedded.ensure_redis(data_dir)
    postgres = embedded.ensure_postgres(data_dir, fsync=False)
    try:
        asyncio.run(_make_template(postgres.port))
        yield Servers(data_dir, redis, postgres)
    finally:
        # By record, not by the pids above: fault tests restart servers on the same ports.
        embedded.stop_all(data_dir)


async def _make_template(port: int) -> None:
    admin = await asyncpg.connect(embedded.postgres_url(port, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    await migrations.migrate(embedded.postgres_url(port, TEMPLATE_DB))


@pytest.fixture
async def settings(servers: Servers) -> AsyncIterator[Settings]:
    """Settings pointing at a brand-new database and an empty Redis."""
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    admin = await asyncpg.connect(embedded.postgres_url(servers.postgres.port, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    redis = Redis.from_url(servers.redis.url)
    await redis.flushall()
    await redis.aclose()
    yield Settings(
        redis_url=servers.redis.url,
        database_url=embedded.postgres_url(servers.postgres.port, name),
        data_dir=str(servers.data_dir),
        bootstrap_admin_key=ADMIN_KEY,
        batch_block_ms=20,
        claim_idle_ms=1_000,
        claim_interval_ms=200,
        trim_interval_ms=200,
        # Limits stay on (every test goes through the limiter) but out of reach of the
        # suite's traffic; tests/test_ratelimit.py tightens them.
        rate_limit_submissions=TEST_LIMIT,
        rate_limit_rank_lookups=TEST_LIMIT,
        rate_limit_board_queries=TEST_LIMIT,
        rate_limit_per_key=TEST_LIMIT,
        rate_limit_admin=TEST_LIMIT,
        # Invalidation of cached pages is asynchronous; tests that read right after a write
        # must see it, so the page cache is on only where tests/test_pagecache.py turns it on.
        page_cache_ttl_s=0,
    )
    admin = await asyncpg.connect(embedded.postgres_url(servers.postgres.port, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    # The service's own client: code under test that is handed this one (jobs, cold start,
    # rate limits) must run on the connection class it runs on in production, which keeps
    # cancellations on Python 3.11 (service.connections.CancellableConnection).
    client = redis_client(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The API in-process, with its lifespan run, and the admin key stored."""
    from service import apikeys

    conn = await asyncpg.connect(settings.database_url)
    await apikeys.store(conn, ADMIN_KEY, "admin", "tests")
    await conn.close()
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process see exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKSTREAM_")}
    for name, value in msgspec.structs.asdict(settings).items():
        env["RANKSTREAM_" + name.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


@pytest.fixture
def spawn(settings: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `rankstream <args>` as a real process; every one is stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env_overrides: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = settings_env(settings) | (env_overrides or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args], env=env, start_new_session=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
