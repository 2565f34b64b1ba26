"""``CallTimeout``: a call's timeout, which turns its own cancellation, and only that, into
TimeoutError, as ``asyncio.timeout`` does."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.forward import CallTimeout


async def test_a_call_that_outlives_its_timeout_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError), CallTimeout(0.01):
        await asyncio.sleep(10)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # and the task is not cancelled later


async def test_a_call_within_its_timeout_or_with_none_is_left_alone() -> None:
    for timeout in (10.0, None):
        with CallTimeout(timeout):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)  # the timer is gone: nothing cancels the task now


async def test_a_caller_that_cancels_the_call_gets_a_cancellation_not_a_timeout() -> None:
    started = asyncio.Event()

    async def call() -> None:
        with CallTimeout(10.0):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_at_the_deadline_from_elsewhere_too_stays_a_cancellation(
) -> None:
    async def call() -> None:
        with CallTimeout(0):
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # the caller, too
            await asyncio.sleep(10)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(call())
