"""The fault knobs' admin endpoint over real HTTP on loopback (what ``meshctl fault`` calls)."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from demo_services.admin import make_admin
from demo_services.faults import Distribution, Faults
from mesh.clock import FakeClock


class Admin:
    def __init__(self) -> None:
        self.faults = Faults(clock=FakeClock(), rng=random.Random(1))
        self.exits: list[int] = []
        self.app = make_admin("payments", "payments-2", self.faults, exit=self.exits.append)
        self.url = ""


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    a = Admin()
    runner = web.AppRunner(a.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    a.url = f"http://127.0.0.1:{port}"
    yield a
    await runner.cleanup()


async def test_knobs_change_field_by_field_and_clear(admin: Admin) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{admin.url}/faults", json={"latency_ms": 50}) as r:
            assert r.status == 200
        async with http.post(f"{admin.url}/faults",
                             json={"distribution": "pareto", "error_rate": 0.2}) as r:
            view = await r.json()
        assert view["replica"] == "payments-2"
        assert view["settings"]["latency_ms"] == 50 and view["settings"]["error_rate"] == 0.2
        assert admin.faults.settings.distribution is Distribution.PARETO
        async with http.delete(f"{admin.url}/faults") as r:
            assert (await r.json())["settings"]["latency_ms"] == 0


async def test_a_brownout_and_its_defaults(admin: Admin) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{admin.url}/brownout", json={"seconds": 10}) as r:
        view = await r.json()
    assert view["brownout"] == {"remaining_s": 10.0, "latency_ms": 200.0, "error_rate": 0.5}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/faults", {"error_rate": 3}, "error_rate 3.0: must be within 0..1"),
    ("/faults", [1, 2], "want a JSON object"),
    ("/brownout", {"latency_ms": 5}, "seconds is required"),
    ("/brownout", {"seconds": 5, "for": 1}, r"unknown field\(s\) \['for'\]"),
    ("/crash", {"exit_code": "soon"}, "exit_code 'soon' is not an integer"),
])
async def test_bad_requests_get_400_naming_the_problem(admin: Admin, path: str, body: object,
                                                      message: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(admin.url + path, json=body) as r:
        assert r.status == 400
        text = await r.text()
    assert path in text
    assert re.search(message, text), text


async def test_crash_answers_first_then_exits_with_the_code(admin: Admin) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{admin.url}/crash", json={"exit_code": 3}) as r:
        assert r.status == 202
        assert (await r.json())["crashing"] is True
    assert admin.exits == []  # not before the answer has left
    await asyncio.sleep(0.2)
    assert admin.exits == [3]
