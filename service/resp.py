"""Redis commands encoded by hand, for bulk writes.

redis-py encodes every argument through several isinstance checks; for the thousands of
arguments of one consumer batch or one rebuild chunk that costs more than Redis itself.
Arguments here are bytes or ASCII text (ids are pattern-checked), encoded once, sent on one
pooled connection, and every reply is read so the connection stays in step.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


def command(*parts: bytes) -> bytes:
    """One command in the Redis protocol."""
    out = [b"*%d\r\n" % len(parts)]
    out += [b"$%d\r\n%s\r\n" % (len(p), p) for p in parts]
    return b"".join(out)


async def send(redis: Redis, commands: list[bytes]) -> list[Any]:
    """Send pre-encoded commands on one pooled connection; return every reply.

    The first error reply is raised after all replies were read."""
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(commands)
        replies: list[Any] = []
        failure: ResponseError | None = None
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the stream of replies stays in step
                failure = failure or exc
                replies.append(exc)
        if failure is not None:
            raise failure
        return replies
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
