"""Background tasks: stopping one without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("rankstream.background")


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, at most `seconds`; whether it is set.

    `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11 wait_for drops a cancellation
    of the caller that arrives as the event is set (CPython gh-86296), and a loop waiting
    on its stop event then runs on after being cancelled."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait until it has ended; a failure while ending is logged (one
    that ended it before this call is not: it was its awaiter's to report).

    `with suppress(CancelledError): await task` also swallows a cancellation of the
    *caller* that arrives while it waits, and the caller then runs on as if never
    cancelled: a consumer's cold-start loop did so when stopped while releasing its lock,
    and the consumer never exited. `asyncio.wait` raises the caller's cancellation and
    never the task's."""
    if task is None:
        return
    if task.done():
        if not task.cancelled():
            task.exception()  # marked seen: a failure before this call was its awaiter's
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed while stopping: %r", task.get_name(), task.exception())
