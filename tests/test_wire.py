"""The read path's Redis link (service.wire): replies in step, redis-py's errors, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from service.settings import Settings
from service.wire import ReadLink


@pytest.fixture
async def link(settings: Settings) -> AsyncIterator[ReadLink]:
    link = ReadLink(settings.redis_url, size=2, timeout_s=0.5)
    yield link
    await link.aclose()


async def test_concurrent_callers_each_get_their_own_reply(link: ReadLink, redis: Redis) -> None:
    await redis.set("k", "v")
    replies = await asyncio.gather(*(link.execute("ECHO", f"m{i}") for i in range(500)))
    assert replies == [f"m{i}".encode() for i in range(500)]
    assert await link.execute("GET", "k") == b"v"
    assert await link.execute("GET", "missing") is None
    assert await link.eval("return {1, 'a', false}", 0) == [1, b"a", None]


async def test_error_replies_are_redis_py_errors_and_keep_the_link_in_step(
    link: ReadLink, redis: Redis
) -> None:
    await redis.set("text", "x")
    with pytest.raises(NoScriptError):
        await link.evalsha("0" * 40, 0)
    results = await asyncio.gather(
        link.execute("INCR", "text"), link.execute("ECHO", "after"), return_exceptions=True
    )
    assert isinstance(results[0], ResponseError) and "not an integer" in str(results[0])
    assert results[1] == b"after"


async def test_a_killed_connection_fails_its_callers_then_reconnects(
    link: ReadLink, redis: Redis
) -> None:
    assert await link.execute("PING") == b"PONG"
    await redis.execute_command("CLIENT", "KILL", "SKIPME", "yes")
    outcomes: list[object] = []
    for _ in range(4):
        try:
            outcomes.append(await link.execute("PING"))
        except ConnectionError as exc:
            outcomes.append(exc)
    assert outcomes[-1] == b"PONG"
    assert all(o == b"PONG" or isinstance(o, ConnectionError) for o in outcomes)


async def test_a_silent_redis_times_out_and_the_link_recovers(link: ReadLink, redis: Redis) -> None:
    assert await link.execute("PING") == b"PONG"
    await redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    with pytest.raises(TimeoutError):
        await link.execute("GET", "k")
    await asyncio.sleep(1.2)
    assert await link.execute("ECHO", "back") == b"back"  # not the late reply of the GET


async def test_nothing_listening_is_a_connection_error() -> None:
    link = ReadLink("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionError):
        await link.execute("PING")
    await link.aclose()


async def test_database_number_and_password_from_the_url(settings: Settings, redis: Redis) -> None:
    await redis.execute_command("SELECT", "0")
    other = Redis.from_url(settings.redis_url.rsplit("/", 1)[0] + "/3")
    try:
        await other.set("in-db-3", "yes")
        link = ReadLink(settings.redis_url.rsplit("/", 1)[0] + "/3")
        assert await link.execute("GET", "in-db-3") == b"yes"
        await link.aclose()
        wrong = ReadLink(settings.redis_url.replace("redis://", "redis://:nope@"))
        with pytest.raises(ConnectionError, match="set-up"):
            await wrong.execute("PING")
        await wrong.aclose()
    finally:
        await other.flushdb()
        await other.aclose()


async def test_execute_many_sends_in_order_on_one_connection(link: ReadLink, redis: Redis) -> None:
    replies = await link.execute_many(("SET", "seq", "1"), ("INCR", "seq"), ("GET", "seq"))
    assert replies == [b"OK", 2, b"2"]
    await redis.hset("h", "f", "v")
    # An error reply is raised once all replies are in; the commands after it still ran.
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await link.execute_many(("INCR", "seq"), ("INCR", "h"), ("INCR", "seq"))
    assert await redis.get("seq") == b"4"
    assert await link.execute("GET", "seq") == b"4"  # still in step
