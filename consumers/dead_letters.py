"""Poison entries: recorded in a dead-letter stream and table, then acknowledged."""

from __future__ import annotations

import logging

import asyncpg
from redis.asyncio import Redis

from consumers.pipeline import Entry
from service import metrics, queries
from service.settings import Settings

log = logging.getLogger("rankstream.consumer")


async def dead_letter(
    settings: Settings,
    redis: Redis,
    pg: asyncpg.Pool,
    entries: list[Entry],
    reason: str,
    deliveries: int,
) -> None:
    """Move entries aside so the stream keeps flowing; they can be replayed later."""
    if not entries:
        return
    await pg.executemany(
        queries.INSERT_DEAD_LETTER,
        [(i.decode(), _payload(f), reason, deliveries) for i, f in entries],
    )
    async with redis.pipeline(transaction=True) as pipe:
        for stream_id, fields in entries:
            pipe.xadd(
                settings.dead_letter_stream,
                {
                    b"id": stream_id,
                    b"payload": _payload(fields),
                    b"reason": reason,
                    b"deliveries": str(deliveries),
                },
            )
        pipe.xack(settings.stream_key, settings.consumer_group, *[i for i, _ in entries])
        await pipe.execute()
    reason_label = reason if not reason.startswith("not processed after") else "redeliveries"
    metrics.DEAD_LETTERS.labels(reason_label).inc(len(entries))
    log.warning("dead-lettered %d entries: %s", len(entries), reason)


def _payload(fields: dict[bytes, bytes]) -> bytes:
    # The original entry, whatever it holds, as the value of its one expected field or,
    # failing that, every field joined so nothing of it is lost.
    if b"e" in fields:
        return fields[b"e"]
    return b"\n".join(k + b"=" + v for k, v in fields.items())
