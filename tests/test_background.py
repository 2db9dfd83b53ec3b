"""Stopping a background task keeps the stopper's own cancellation; so does waiting on an
event with a timeout."""

from __future__ import annotations

import asyncio
import gc

import pytest

from service.background import cancel_and_wait, wait_set


async def slow_to_stop(stopped: asyncio.Event) -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)  # cleanup that takes a while, as closing a connection
        stopped.set()
        raise


async def test_the_stopper_cancelled_while_waiting_is_cancelled_too() -> None:
    stopped = asyncio.Event()
    inner = asyncio.create_task(slow_to_stop(stopped))
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.01)  # outer now waits for inner's cleanup
    outer.cancel()
    await asyncio.wait({outer})
    assert outer.cancelled()  # `with suppress(CancelledError): await inner` ends it normally
    await asyncio.wait({inner})
    assert inner.cancelled() and stopped.is_set()


async def test_waits_for_the_task_to_end_and_logs_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup broke") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and isinstance(task.exception(), RuntimeError)
    assert "cleanup broke" in caplog.text
    await cancel_and_wait(None)  # nothing to stop


async def test_a_task_that_failed_before_is_left_quiet(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("failed on its own")

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        task = asyncio.create_task(fails())
        await asyncio.wait({task})
        await cancel_and_wait(task)
        del task
        gc.collect()  # an exception never retrieved is reported when the task is collected
    finally:
        loop.set_exception_handler(handler)
    assert "failed on its own" not in caplog.text
    assert reported == []


async def test_a_wait_on_an_event_cancelled_as_the_event_is_set_is_cancelled() -> None:
    # The consumer's claimer waits on its stop event between looks: with asyncio.wait_for
    # on Python 3.11 this cancellation was lost and the wait returned as if not cancelled.
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_set(event, 60))
    await asyncio.sleep(0)
    event.set()
    waiting.cancel()
    await asyncio.wait({waiting})
    assert waiting.cancelled()


async def test_a_wait_on_an_event_says_whether_it_was_set() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 60) is True
