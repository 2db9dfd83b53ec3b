"""Background jobs of an API process (admin rebuilds): their state, kept in Redis.

A job runs as a task of the API process that accepted it, and its state lives in a Redis
hash so that every API worker can answer for any job. While it runs, a heartbeat refreshes
`updated_at`. A process that stops (a deploy, a crash, kill -9) stops the heartbeat: a job
whose `updated_at` is older than `ABANDONED_AFTER_S` is reported `failed` ("abandoned")
instead of `running` forever, and the operator starts it again. A job cancelled at
shutdown records that itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from redis.asyncio import Redis

from service import background
from service.rebuild import Progress, RebuildReport

JOB_TTL_S = 86_400
HEARTBEAT_S = 5.0
ABANDONED_AFTER_S = 30.0  # several heartbeats missed: the process running it is gone
JobState = Literal["queued", "running", "done", "failed"]
Work = Callable[[Progress], Awaitable[RebuildReport]]


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """A background job's progress."""

    id: Annotated[str, msgspec.Meta(examples=["4c1d9e2a7b3f5a60"])]
    kind: str
    board_id: str
    window: str | None
    period: str | None
    state: JobState
    done: int
    total: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    result: RebuildReport | None


def job_key(job_id: str) -> str:
    """The hash holding a job's state."""
    return f"rankstream:job:{job_id}"


def _stamp() -> str:
    return datetime.now(UTC).isoformat()


async def _update(redis: Redis, job_id: str, **fields: str | int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        mapping: dict[str | bytes, str | bytes | int] = {"updated_at": _stamp()}
        mapping.update(fields)
        pipe.hset(job_key(job_id), mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(job_key(job_id), JOB_TTL_S)
        await pipe.execute()


async def create_job(
    redis: Redis, kind: str, board_id: str, window: str | None, period: str | None
) -> str:
    """Record a queued job; its id."""
    job_id = secrets.token_hex(12)
    await _update(
        redis,
        job_id,
        id=job_id,
        kind=kind,
        board_id=board_id,
        window=window or "",
        period=period or "",
        state="queued",
        done=0,
        total=0,
        error="",
        created_at=_stamp(),
        finished_at="",
        result="",
    )
    return job_id


async def _heartbeat(redis: Redis, job_id: str) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        with contextlib.suppress(Exception):  # a missed beat is retried; many read as gone
            await _update(redis, job_id)


async def run_job(redis: Redis, job_id: str, work: Work) -> None:
    """Run `work` (given a progress callback) as the job, recording its progress, heartbeat
    and outcome in the job's hash."""

    async def progress(done: int, total: int) -> None:
        await _update(redis, job_id, state="running", done=done, total=total)

    await _update(redis, job_id, state="running")
    beating = asyncio.create_task(_heartbeat(redis, job_id))
    try:
        report = await work(progress)
    except BaseException as exc:
        reason = (
            "interrupted: its API process stopped"
            if isinstance(exc, asyncio.CancelledError)
            else f"{type(exc).__name__}: {exc}"
        )
        with contextlib.suppress(Exception):  # Redis may be what failed
            await _update(redis, job_id, state="failed", error=reason, finished_at=_stamp())
        raise
    finally:
        await background.cancel_and_wait(beating)
    await _update(
        redis,
        job_id,
        state="done",
        done=report.rows,
        total=report.rows,
        finished_at=_stamp(),
        result=msgspec.json.encode(report).decode(),
    )


async def job_view(redis: Redis, job_id: str) -> JobView | None:
    """A job's state, or None if there is no such job (or it expired)."""
    raw = await redis.hgetall(job_key(job_id))
    if not raw:
        return None
    f = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    state = msgspec.convert(f["state"], JobState)
    updated_at = datetime.fromisoformat(f["updated_at"])
    error = f["error"] or None
    silent = datetime.now(UTC) - updated_at
    if state in ("queued", "running") and silent > timedelta(seconds=ABANDONED_AFTER_S):
        state = "failed"
        seconds = silent.total_seconds()
        error = f"abandoned: no heartbeat for {seconds:.0f} s (its API process stopped)"
    return JobView(
        id=f["id"],
        kind=f["kind"],
        board_id=f["board_id"],
        window=f["window"] or None,
        period=f["period"] or None,
        state=state,
        done=int(f["done"]),
        total=int(f["total"]),
        error=error,
        created_at=datetime.fromisoformat(f["created_at"]),
        updated_at=updated_at,
        finished_at=datetime.fromisoformat(f["finished_at"]) if f["finished_at"] else None,
        result=msgspec.json.decode(f["result"], type=RebuildReport) if f["result"] else None,
    )
