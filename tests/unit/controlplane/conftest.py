"""Copies of the state store's keys that follow it, as a control-plane replica's do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from controlplane.state import Copy, StoreState

Follow = Callable[[StoreState, Sequence[Copy]], Awaitable[None]]


@pytest.fixture
async def follow() -> AsyncIterator[Follow]:
    """``await follow(state, [copies])``: the copies follow ``state``'s store from its first
    listing on, until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    async def start(state: StoreState, copies: Sequence[Copy]) -> None:
        tasks.append(asyncio.create_task(state.follow(copies)))
        await state.listed.wait()

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
