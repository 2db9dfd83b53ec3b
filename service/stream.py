"""The submission stream: entry encoding, publishing, backlog, and outcome notices."""

from __future__ import annotations

import time

import msgspec
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis

from service.models import Applied, ScoreEvent

FIELD = b"e"
BACKLOG_CHECK_S = 0.25
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ScoreEvent)
_applied_decoder = msgspec.msgpack.Decoder(Applied)


def encode(event: ScoreEvent) -> bytes:
    """One entry's payload."""
    return _encoder.encode(event)


def decode(fields: dict[bytes, bytes]) -> ScoreEvent:
    """An entry back into an event; msgspec.DecodeError / KeyError when it is not one."""
    return _decoder.decode(fields[FIELD])


# A batch's entries in one script call: atomic like MULTI/EXEC, with one reply instead of
# one a command (reading 52 replies through redis-py cost more than encoding the events).
_PUBLISH_LUA = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i])
end
return #ARGV - 1
"""


async def publish(redis: Redis, stream_key: str, events: list[ScoreEvent]) -> None:
    """XADD every event at once: a batch lands whole or not at all."""
    if len(events) == 1:
        await redis.xadd(stream_key, {FIELD: encode(events[0])})
        return
    script = redis.register_script(_PUBLISH_LUA)
    await script(keys=[stream_key], args=[FIELD, *(encode(event) for event in events)])


async def ensure_group(redis: Redis, stream_key: str, group: str) -> None:
    """Create the consumer group at the stream's very start (making the stream) if missing,
    so entries accepted before any consumer ran are read too."""
    try:
        await redis.xgroup_create(stream_key, group, id="0", mkstream=True)
    except redis_exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Backlog:
    """The stream's length, read at most every 0.25 s: submissions are refused past a bound."""

    def __init__(self, redis: Redis, stream_key: str, bound: int) -> None:
        self._redis = redis
        self._stream_key = stream_key
        self._bound = bound
        self._length = 0
        self._checked_at = float("-inf")

    async def full(self) -> bool:
        """True when the stream holds more than the bound (unprocessed plus pending)."""
        now = time.monotonic()
        if now - self._checked_at > BACKLOG_CHECK_S:
            self._length = int(await self._redis.xlen(self._stream_key))
            self._checked_at = now
        return self._length > self._bound


def notice_key(event_id: str) -> str:
    """List where the consumer leaves the outcome of an event someone waits for."""
    return f"rankstream:applied:{event_id}"


NOTICE_TTL_S = 60


async def send_notice(redis: Redis, outcomes: list[Applied]) -> None:
    """Consumer side: leave outcomes for waiting clients (expire if nobody collects)."""
    if not outcomes:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for outcome in outcomes:
            key = notice_key(outcome.event_id)
            pipe.rpush(key, _encoder.encode(outcome))
            pipe.expire(key, NOTICE_TTL_S)
        await pipe.execute()


async def wait_notice(redis: Redis, event_id: str, timeout_s: float) -> Applied | None:
    """API side: the outcome of an event, or None when the timeout passes first."""
    got = await redis.blpop([notice_key(event_id)], timeout=timeout_s)
    if got is None:
        return None
    await redis.delete(notice_key(event_id))
    payload = got[1]
    assert isinstance(payload, bytes)
    return _applied_decoder.decode(payload)
