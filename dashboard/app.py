"""The dashboard's web server: the page, the state as JSON, and the state as it changes.

    GET /            the page (static/index.html; static/dashboard.js draws it)
    GET /static/...  the page's script and style
    GET /api/state   the whole state, JSON (:mod:`dashboard.collector`)
    GET /events      server-sent events: the state now, then again each time it changes
                     (``event: state``); a comment line every 15 s keeps a quiet stream open.
                     What the page looks at, for as long as the stream is open:
                     ``?window=15|60|300`` (seconds of golden metrics; default 15),
                     ``&service=NAME`` (the inside of that service's clusters),
                     ``&top=1`` (a sample of live requests)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboard.collector import WINDOWS, Collector, Watch

STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0  # seconds of silence before a comment line on /events
COLLECTOR = web.AppKey("collector", Collector)


def make_app(collector: Collector) -> web.Application:
    """The aiohttp application serving ``collector``'s state; it runs the collector too."""
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    @routes.get("/api/state")
    async def state(_: web.Request) -> web.Response:
        return web.Response(text=collector.payload, content_type="application/json")

    streams: set[asyncio.Task[Any]] = set()  # the open event streams' handlers

    @routes.get("/events")
    async def events(request: web.Request) -> web.StreamResponse:
        try:
            watch = _watch(request)
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"{error}\n") from None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        version, payload = collector.version, collector.payload
        this = asyncio.current_task()
        assert this is not None
        streams.add(this)
        try:
            with collector.watching(watch), \
                    contextlib.suppress(ConnectionResetError):  # the page was closed
                await response.write(f"event: state\ndata: {payload}\n\n".encode())
                while True:
                    try:
                        async with asyncio.timeout(KEEPALIVE):
                            version, payload = await collector.next_state(version)
                    except TimeoutError:
                        await response.write(b": still here\n\n")
                        continue
                    await response.write(f"event: state\ndata: {payload}\n\n".encode())
        finally:
            streams.discard(this)
        return response

    async def close_streams(_: web.Application) -> None:
        """On the way out, end every open event stream: else aiohttp waits for them."""
        for task in list(streams):
            task.cancel()

    async def run_collector(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(collector.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app = web.Application()
    app[COLLECTOR] = collector
    app.add_routes(routes)
    app.router.add_static("/static", STATIC)
    app.cleanup_ctx.append(run_collector)
    app.on_shutdown.append(close_streams)
    return app


def _watch(request: web.Request) -> Watch:
    """What a page asks to look at (``/events``' query).

    Raises:
        ValueError: a value that is not one the dashboard offers, saying which.
    """
    query = request.query
    try:
        window = float(query.get("window", WINDOWS[0]))
    except ValueError:
        raise ValueError(f"window {query['window']!r}: want a number of seconds") from None
    top = query.get("top", "0")
    if top not in ("0", "1"):
        raise ValueError(f"top {top!r}: want 0 or 1")
    return Watch(window=window, service=query.get("service") or None, top=top == "1")
