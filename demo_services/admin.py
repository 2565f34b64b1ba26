"""A demo service's own admin endpoint: its fault knobs over HTTP/JSON (``meshctl fault``).

    GET    /healthz    200 "ok": the process is up (the local mesh waits for it)
    GET    /faults     the knobs in force, any brownout, and what they did so far
    POST   /faults     change some knobs: {"latency_ms": 50, "distribution": "lognormal",
                       "sigma": 1.0, "alpha": 1.5, "error_rate": 0.1} (fields left out stay)
    DELETE /faults     back to normal: no latency, no errors, no brownout
    POST   /brownout   {"seconds": 10, "latency_ms": 200, "error_rate": 0.5}: slow and failing
                       for that long, then well again
    POST   /crash      {"exit_code": 1}: answers 202, then the process exits at once (no
                       draining, no deregistration: as a crash looks to the mesh)

This endpoint is not behind the sidecar: it is how an operator (or a test) breaks the service,
not part of the service's API. Bad input gets 400 with the field and the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from demo_services.faults import Faults, FaultSettings

CRASH_AFTER = 0.05  # seconds: long enough for the 202 to leave before the process goes


def make_admin(service: str, replica: str, faults: Faults, *,
               exit: Callable[[int], Any] = os._exit) -> web.Application:
    """The admin application for ``faults`` of ``replica`` (an instance of ``service``)."""
    routes = web.RouteTableDef()

    def view() -> dict[str, Any]:
        return {"service": service, "replica": replica, **faults.to_json()}

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except json.JSONDecodeError as error:
            raise web.HTTPBadRequest(text=f"{request.path}: body is not JSON: {error}\n") \
                from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text=f"{request.path}: want a JSON object, got {data!r}\n")
        return data

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.get("/faults")
    async def get_faults(_: web.Request) -> web.Response:
        return web.json_response(view())

    @routes.post("/faults")
    async def post_faults(request: web.Request) -> web.Response:
        try:
            faults.set(FaultSettings.from_json(await body(request), faults.settings))
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"/faults: {error}\n") from None
        return web.json_response(view())

    @routes.delete("/faults")
    async def delete_faults(_: web.Request) -> web.Response:
        faults.clear()
        return web.json_response(view())

    @routes.post("/brownout")
    async def brownout(request: web.Request) -> web.Response:
        data = await body(request)
        unknown = set(data) - {"seconds", "latency_ms", "error_rate"}
        try:
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}: want seconds, "
                                 f"latency_ms, error_rate")
            if "seconds" not in data:
                raise ValueError("seconds is required")
            faults.start_brownout(float(data["seconds"]),
                                  latency=float(data.get("latency_ms", 200)) / 1000,
                                  error_rate=float(data.get("error_rate", 0.5)))
        except (TypeError, ValueError) as error:
            raise web.HTTPBadRequest(text=f"/brownout: {error}\n") from None
        return web.json_response(view())

    @routes.post("/crash")
    async def crash(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            code = int(data.get("exit_code", 1))
        except (TypeError, ValueError):
            raise web.HTTPBadRequest(text=f"/crash: exit_code {data.get('exit_code')!r} is not "
                                          f"an integer\n") from None
        asyncio.get_running_loop().call_later(CRASH_AFTER, exit, code)
        return web.json_response({"service": service, "replica": replica,
                                  "crashing": True, "exit_code": code}, status=202)

    app = web.Application()
    app.add_routes(routes)
    return app
