"""Redis and PostgreSQL clients, sized from settings."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable

import asyncpg
import msgspec
from redis import exceptions as redis_exceptions
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from service.settings import Settings


class _CancellableWrites(AbstractConnection):
    """redis-py's connection, with its write timeout kept by `asyncio.timeout`.

    With a socket timeout (redis-py 8 sets 5 s by default) redis-py writes every command
    inside `asyncio.wait_for`, which on Python 3.11 drops a cancellation that arrives as
    the awaited write finishes (CPython gh-86296, fixed in 3.12). A write finishes at once,
    so most cancellations of a task busy with Redis were lost: 655 of 1,000 in a loop of
    commands cancelled at random, and the consumer's upkeep loop ran on after SIGTERM."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        if not timeout or sys.version_info >= (3, 12):
            await super().send_packed_command(command, check_health)
            return
        self.socket_timeout = None  # redis-py's write path without wait_for
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:  # as redis-py's own: the connection is closed by then
            raise redis_exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class CancellableConnection(_CancellableWrites, Connection):
    """TCP (redis://)."""


class CancellableSSLConnection(_CancellableWrites, SSLConnection):
    """TLS (rediss://)."""


class CancellableUnixConnection(_CancellableWrites, UnixDomainSocketConnection):
    """Unix socket (unix://)."""


# by the class redis-py picks for a URL's scheme (its URL options win over a
# connection_class argument, so the choice is made after parsing)
_CANCELLABLE: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: CancellableConnection,
    SSLConnection: CancellableSSLConnection,
    UnixDomainSocketConnection: CancellableUnixConnection,
}


def redis_client(settings: Settings, url: str | None = None) -> Redis:
    """A Redis client on a blocking pool: when all connections are busy, callers wait."""
    pool = BlockingConnectionPool.from_url(
        url or settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_timeout_s,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        # A restarted Redis closes every pooled connection: retry on a fresh one.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 3),
        retry_on_error=[redis_exceptions.ConnectionError, redis_exceptions.TimeoutError],
    )
    pool.connection_class = _CANCELLABLE[pool.connection_class]
    return Redis(connection_pool=pool)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as msgspec-encoded bytes, not through the stdlib json module.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + msgspec.json.encode(value),
        decoder=lambda data: msgspec.json.decode(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without the session reset (asyncpg has rolled back any open transaction)."""


async def pg_pool(
    settings: Settings, url: str | None = None, *, session_reset: bool = True
) -> asyncpg.Pool:
    """An asyncpg pool with the jsonb codec installed.

    `session_reset=False` for a process whose statements change no session state (only SET
    LOCAL and SET TRANSACTION, no advisory locks, LISTEN or cursors outside a transaction):
    asyncpg's reset query on every release (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL) is then a round trip with nothing to undo."""
    pool = await asyncpg.create_pool(
        url or settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        init=_init_connection,
        reset=None if session_reset else _keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool
