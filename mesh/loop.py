"""The event loop: uvloop where it imports, plain asyncio otherwise.

uvloop makes TLS clearly cheaper (measured: about 720 vs 852 µs of CPU per request through a
pair of mTLS hops) and plain HTTP/2 a little faster, so every entry point runs through
:func:`run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a fresh uvloop loop if uvloop is installed, else a default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - exercised only where uvloop is missing
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the best available loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
