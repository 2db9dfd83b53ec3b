"""Background jobs: progress, outcome, and a job whose process stopped is not `running`
forever."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from service import jobs
from service.rebuild import Progress, RebuildReport


async def wait_state(redis: Redis, job_id: str, state: str) -> jobs.JobView:
    for _ in range(100):
        view = await jobs.job_view(redis, job_id)
        assert view is not None
        if view.state == state:
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"job never {state}: {view}")


async def test_a_job_reports_progress_and_its_outcome(redis: Redis) -> None:
    go = asyncio.Event()

    async def work(progress: Progress) -> RebuildReport:
        await progress(3, 10)
        await go.wait()
        return RebuildReport(board_id="b", sets=[], rows=10, seconds=0.5)

    job_id = await jobs.create_job(redis, "rebuild", "b", "all", None)
    assert (await jobs.job_view(redis, job_id)).state == "queued"  # type: ignore[union-attr]
    task = asyncio.create_task(jobs.run_job(redis, job_id, work))
    running = await wait_state(redis, job_id, "running")
    assert (running.done, running.total, running.window, running.period) == (3, 10, "all", None)
    go.set()
    await task
    done = await wait_state(redis, job_id, "done")
    assert (done.done, done.total, done.error) == (10, 10, None)
    assert done.result == RebuildReport(board_id="b", sets=[], rows=10, seconds=0.5)
    assert done.finished_at is not None

    async def broken(progress: Progress) -> RebuildReport:
        raise RuntimeError("no such set")

    failing = await jobs.create_job(redis, "rebuild", "b", None, None)
    with pytest.raises(RuntimeError):
        await jobs.run_job(redis, failing, broken)
    failed = await wait_state(redis, failing, "failed")
    assert failed.error == "RuntimeError: no such set"
    assert await jobs.job_view(redis, "no-such-job") is None


async def test_a_job_whose_process_stopped_is_not_running_forever(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(jobs, "ABANDONED_AFTER_S", 0.4)

    async def slow(progress: Progress) -> RebuildReport:
        await asyncio.sleep(60)  # no progress at all: only the heartbeat says it lives
        raise AssertionError("cancelled before")

    alive = await jobs.create_job(redis, "rebuild", "b", None, None)
    task = asyncio.create_task(jobs.run_job(redis, alive, slow))
    await asyncio.sleep(1.0)  # longer than ABANDONED_AFTER_S: the heartbeat kept it running
    assert (await jobs.job_view(redis, alive)).state == "running"  # type: ignore[union-attr]
    task.cancel()  # the API process shuts down
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = await wait_state(redis, alive, "failed")
    assert stopped.error == "interrupted: its API process stopped"

    # a job whose process died without a word (kill -9): its heartbeat stops
    orphan = await jobs.create_job(redis, "rebuild", "b", None, None)
    assert (await jobs.job_view(redis, orphan)).state == "queued"  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    gone = await jobs.job_view(redis, orphan)
    assert gone is not None and gone.state == "failed"
    assert gone.error is not None and gone.error.startswith("abandoned: no heartbeat for")
