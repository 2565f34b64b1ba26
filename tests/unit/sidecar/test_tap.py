"""The tap: the last outbound requests, numbered, read from a sequence number on.

The ring on its own first (what ``after``, ``limit`` and ``dropped`` mean), then what the
outbound path keeps in it however a call ends, then ``/tap`` over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.admin import make_admin
from sidecar.tap import TAP_SIZE, Tap
from tests.unit.sidecar.scripted import Answer, Caller, Hang, Reset, Upstreams
from tests.unit.sidecar.test_hedging import hedged
from tests.unit.sidecar.test_outbound import (
    GET,
    PUT,
    RETRY,
    mesh,
    outbound_with_a_route_to_a_removed_cluster,
)

AT = 1_700_000_000.0  # the wall clock's time of the first request
BOOT = "b007"  # the boot id of the tap under test


def tap_of(count: int) -> Tap:
    """A tap that kept ``count`` requests, one wall-clock second apart, GET /1, /2, ..."""
    wall = itertools.count(AT)
    tap = Tap(wall=lambda: next(wall), boot=BOOT)
    for n in range(1, count + 1):
        tap.record("orders", "orders", "GET", f"/{n}", 200, 0.0125, 0, 0)
    return tap


def seqs(tap: Tap, after: int = 0, limit: int = TAP_SIZE) -> tuple[list[int], int, int]:
    """The numbers read after ``after``, the page's ``dropped`` and its ``next``."""
    page = tap.since(after, limit)
    return [r["seq"] for r in page.requests], page.dropped, page.next


# -- the ring ----------------------------------------------------------------------------------

def test_requests_come_back_oldest_first_numbered_from_one() -> None:
    tap = tap_of(3)
    page = tap.since()
    assert (page.next, page.dropped) == (3, 0)
    assert page.requests[0] == {"seq": 1, "at": AT, "cluster": "orders", "authority": "orders",
                                "method": "GET", "path": "/1", "status": 200,
                                "latency_ms": 12.5, "retries": 0, "hedges": 0}
    assert [r["seq"] for r in page.requests] == [1, 2, 3]


def test_after_gives_what_came_since_and_next_says_where_to_go_on() -> None:
    tap = tap_of(3)
    assert seqs(tap, after=2) == ([3], 0, 3)
    assert seqs(tap, after=3) == ([], 0, 3)  # nothing new
    tap.record("orders", "orders", "GET", "/4", 503, 0.001, 1, 0)
    assert seqs(tap, after=3) == ([4], 0, 4)


def test_an_empty_tap_answers_from_zero() -> None:
    assert seqs(Tap()) == ([], 0, 0)


def test_requests_the_ring_no_longer_holds_are_counted_as_dropped() -> None:
    tap = tap_of(TAP_SIZE + 10)  # the first 10 are gone
    got, dropped, _ = seqs(tap)
    assert (got[0], got[-1], len(got), dropped) == (11, TAP_SIZE + 10, TAP_SIZE, 10)
    got, dropped, _ = seqs(tap, after=4)
    assert (got[0], dropped) == (11, 6)  # 5 to 10


def test_a_limit_gives_the_newest_and_counts_the_rest_as_dropped() -> None:
    tap = tap_of(10)
    assert seqs(tap, after=2, limit=3) == ([8, 9, 10], 5, 10)  # 3 to 7 skipped
    assert tap.since().requests == tap.since(0, 100).requests  # the default limit: 100


def test_a_number_from_before_a_restart_reads_from_the_start() -> None:
    tap = tap_of(TAP_SIZE + 3)  # a poller last saw 900 from this sidecar's previous run
    got, dropped, next_seq = seqs(tap, after=900, limit=2)
    assert (got, dropped, next_seq) == ([TAP_SIZE + 2, TAP_SIZE + 3], TAP_SIZE + 1,
                                        TAP_SIZE + 3)


def test_a_restart_that_passed_the_readers_number_shows_in_the_boot() -> None:
    before = tap_of(3)
    page = before.since()
    kept_boot, after = page.boot, page.next  # what a poller keeps: boot "b007", next 3
    assert (kept_boot, after) == (BOOT, 3)

    restarted = Tap(boot="5eed")  # the sidecar restarts, and forwards 5 requests
    for n in range(1, 6):
        restarted.record("orders", "orders", "GET", f"/{n}", 200, 0.001, 0, 0)

    page = restarted.since(after)  # 4 and 5: requests 1 to 3 of the new run would be missed
    assert (page.boot, [r["seq"] for r in page.requests]) == ("5eed", [4, 5])
    assert page.boot != kept_boot  # so the poller starts over
    assert seqs(restarted) == ([1, 2, 3, 4, 5], 0, 5)


def test_each_tap_makes_its_own_random_boot() -> None:
    first, second = Tap().boot, Tap().boot
    assert first != second  # 64 random bits each
    assert len(first) == 16 and int(first, 16) >= 0


def test_a_path_is_kept_without_its_query() -> None:
    tap = Tap()
    tap.record("orders", "orders", "GET", "/login?token=s3cret&next=/", 200, 0.001, 0, 0)
    tap.record("orders", "orders", "GET", "/search?", 200, 0.001, 0, 0)
    tap.record("orders", "orders", "GET", "/items/1", 200, 0.001, 0, 0)
    assert [r["path"] for r in tap.since().requests] == ["/login", "/search", "/items/1"]


@pytest.mark.parametrize(("after", "limit", "message"), [
    (-1, 10, r"after -1: must not be negative \(0 or none: from the start\)"),
    (0, 0, r"limit 0: must be within 1\.\.512"),
    (0, TAP_SIZE + 1, r"limit 513: must be within 1\.\.512"),
])
def test_a_bad_read_says_which_number_and_why(after: int, limit: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tap_of(3).since(after, limit)


# -- what the outbound path keeps, however a call ends -----------------------------------------

async def test_a_retried_call_is_kept_once_with_its_retries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Reset(), Answer(200)), retry_policy=RETRY)
    await m.outbound.handle(Caller(PUT))
    [kept] = m.metrics.tap.since().requests
    assert {k: v for k, v in kept.items() if k not in ("at", "latency_ms")} == {
        "seq": 1, "cluster": "orders", "authority": "orders", "method": "PUT",
        "path": "/items/1", "status": 200, "retries": 1, "hedges": 0}


async def test_a_hedged_call_is_kept_with_its_hedges(monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Hang(), Answer(200)))
    await m.outbound.handle(Caller(GET))
    assert [(r["status"], r["retries"], r["hedges"]) for r in m.metrics.tap.since().requests] \
        == [(200, 0, 1)]


async def test_calls_answered_by_the_sidecar_itself_are_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(), circuit_breakers={"max_requests": 0})
    await m.outbound.handle(Caller(GET))  # the breaker refuses it
    await m.outbound.handle(Caller([(":method", "GET"), (":path", "/"),
                                    (":authority", "nowhere")]))  # no route
    assert [(r["cluster"], r["authority"], r["status"]) for r in m.metrics.tap.since().requests] \
        == [("orders", "orders", 503), ("none", "nowhere", 404)]


async def test_a_call_to_a_cluster_it_lacks_is_kept() -> None:
    outbound, metrics = outbound_with_a_route_to_a_removed_cluster()
    await outbound.handle(Caller(GET))
    assert [(r["cluster"], r["status"]) for r in metrics.tap.since().requests] == \
        [("orders-v2", 503)]


async def test_an_outbound_call_is_kept_without_its_query(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(200)))
    await m.outbound.handle(Caller([(":method", "GET"), (":path", "/items?api_key=s3cret"),
                                    (":authority", "orders")]))
    [kept] = m.metrics.tap.since().requests
    assert kept["path"] == "/items"


async def test_a_call_its_caller_abandons_is_kept_as_reset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Hang()))
    call = asyncio.create_task(m.outbound.handle(Caller(GET)))
    await m.upstreams.opened.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert [r["status"] for r in m.metrics.tap.since().requests] == ["reset"]


# -- /tap --------------------------------------------------------------------------------------

async def test_tap_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(200), Answer(200), Answer(200)))
    for _ in range(3):
        await m.outbound.handle(Caller(GET))
    app = make_admin(m.outbound.config, m.metrics, lambda: (True, "ready"))
    async with TestClient(TestServer(app)) as http:
        everything = await (await http.get("/tap")).json()
        assert list(everything) == ["boot", "service", "next", "dropped", "requests"]
        assert (everything["boot"], everything["service"], everything["next"],
                everything["dropped"]) == (m.metrics.tap.boot, "shopper", 3, 0)
        assert [r["seq"] for r in everything["requests"]] == [1, 2, 3]
        newest = await (await http.get("/tap", params={"after": "1", "limit": "1"})).json()
        assert (newest["next"], newest["dropped"], [r["seq"] for r in newest["requests"]]) == \
            (3, 1, [3])
        for query, message in [({"after": "two"}, "after 'two': must be an integer\n"),
                               ({"limit": "1000"}, "limit 1000: must be within 1..512\n"),
                               ({"after": "-7"}, "after -7: must not be negative")]:
            response = await http.get("/tap", params=query)
            assert response.status == 400
            assert (await response.text()).startswith(message)
