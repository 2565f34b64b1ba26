"""HTTP through the mesh: curl (HTTP/1.1 and h2c) → sidecar A → (mTLS) → W1 → an aiohttp app.

The app speaks only HTTP/1.1 (its cluster says ``app_protocol: HTTP1``); between the sidecars
it is HTTP/2 whatever the caller spoke. curl names the service in ``Host`` / ``:authority``
and connects to sidecar A's outbound listener.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mesh import tls
from mesh.http2 import connect, request
from tests.integration.sidecar.conftest import (
    A_HOST,
    INBOUND,
    OUTBOUND,
    STRICT_TIMEOUT,
    W1_HOST,
    Mesh,
    SidecarProcess,
    run_tool,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

# The deadline passes at A and, a moment earlier or later, at W1 (which got the remaining time):
# whichever notices first answers 504.
DEADLINE_ANSWERS = {(504, "cluster web: deadline exceeded\n"),
                    (504, "web: the app did not answer within the caller's deadline\n")}
HTTP_VERSIONS = {"http1.1": ["--http1.1"], "h2c": ["--http2-prior-knowledge"]}


async def curl(authority: str, path: str, *options: str, version: str = "http1.1",
               timeout: float = 15.0) -> tuple[int, str, str]:
    """curl to sidecar A for ``authority``; returns (status, body, HTTP version it spoke)."""
    code, out, err = await run_tool(
        "curl", "-sS", "--max-time", str(timeout), *HTTP_VERSIONS[version],
        "--connect-to", f"{authority}:80:{A_HOST}:{OUTBOUND}",
        "-w", "\n%{http_code} %{http_version}", *options, f"http://{authority}{path}",
        timeout=timeout + 5)
    assert code == 0, f"curl failed ({code}): {err}"
    body, _, tail = out.rpartition("\n")
    status, spoken = tail.split()
    return int(status), body, spoken


def certificate_hash(path: Path) -> str:
    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def xfcc(mesh: Mesh, by: str, caller: str) -> str:
    return (f"By={mesh.pki.spiffe_id(by)};Hash={certificate_hash(mesh.pki.cert(caller))};"
            f"URI={mesh.pki.spiffe_id(caller)}")


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_curl_reaches_the_http1_app(mesh: Mesh, version: str) -> None:
    status, body, spoken = await curl("web", "/echo?q=1", version=version)

    echoed = json.loads(body)
    assert (status, spoken) == (200, "1.1" if version == "http1.1" else "2")
    assert echoed["app"] == "web"
    assert echoed["version"] == "1.1"  # the app was spoken to in HTTP/1.1 either way
    assert echoed["path"] == "/echo?q=1"
    assert echoed["headers"]["host"] == "web"
    assert echoed["headers"]["x-forwarded-client-cert"] == xfcc(mesh, "web", "client")


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_request_body_of_a_mebibyte_arrives_intact(mesh: Mesh, version: str,
                                                         tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096
    (tmp_path / "body").write_bytes(payload)

    status, body, _ = await curl("web", "/echo", "--data-binary", f"@{tmp_path / 'body'}",
                                 "-H", "content-type: application/octet-stream",
                                 version=version)

    echoed = json.loads(body)
    assert status == 200
    assert echoed["method"] == "POST"
    assert echoed["body_length"] == len(payload)
    assert echoed["body_sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_forged_client_cert_and_forwarded_for_are_replaced(mesh: Mesh,
                                                                 version: str) -> None:
    forged = f"By={mesh.pki.spiffe_id('web')};URI={mesh.pki.spiffe_id('admin')}"

    status, body, _ = await curl("web", "/echo", "-H", f"x-forwarded-client-cert: {forged}",
                                 "-H", "x-forwarded-for: 203.0.113.7",
                                 "-H", "x-mesh-attempt: 99", version=version)

    headers = json.loads(body)["headers"]
    assert status == 200
    assert headers["x-forwarded-client-cert"] == xfcc(mesh, "web", "client")
    assert "x-forwarded-for" not in headers
    assert headers["x-mesh-attempt"] == "1"  # the mesh's own count, not the caller's


async def test_inbound_replaces_what_a_peer_with_a_valid_certificate_forged(
        mesh: Mesh) -> None:
    # Straight to W1's inbound listener, as a mesh workload ("intruder") that is not a
    # sidecar we run: whatever it claims in headers, W1 tells its app what mTLS proved.
    context = tls.client_context(mesh.pki.cert("intruder"), mesh.pki.key("intruder"),
                                 mesh.pki.ca_cert)
    conn = await connect(W1_HOST, INBOUND, ssl=context, server_hostname="localhost")
    try:
        response = await request(conn, "GET", "/echo", authority="web", scheme="https", headers=[
            ("x-forwarded-client-cert", f"By=x;URI={mesh.pki.spiffe_id('client')}"),
            ("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.0.0.1")])
    finally:
        await conn.shutdown(1.0)

    echoed = json.loads(response.body)
    assert response.status == 200
    assert echoed["headers"]["x-forwarded-client-cert"] == xfcc(mesh, "web", "intruder")
    assert echoed["forwarded_for"] == []


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_authorization_denies_with_403_and_a_reason(mesh: Mesh, version: str) -> None:
    status, body, _ = await curl("web", "/admin/users", version=version)
    allowed, _, _ = await curl("web", "/", version=version)

    assert status == 403
    assert body == "cluster.local/ns/default/sa/client is denied /admin/users by policy\n"
    assert allowed == 200


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_unknown_destination_is_404_with_a_clear_message(mesh: Mesh,
                                                               version: str) -> None:
    started = time.monotonic()
    status, body, _ = await curl("nowhere", "/x", version=version)

    assert (status, body) == (404, "no route to nowhere/x\n")
    assert time.monotonic() - started < 5.0


async def test_unreachable_endpoint_is_503_at_once(mesh: Mesh) -> None:
    started = time.monotonic()
    status, body, _ = await curl("ghost", "/")

    assert status == 503
    assert body.startswith("cluster ghost: upstream connect-failure (127.0.20.9:15006)")
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_route_timeout_is_504_and_the_apps_request_is_cancelled(
        mesh: Mesh, version: str) -> None:
    test_id = f"route-timeout-{version}"
    started = time.monotonic()
    status, body, _ = await curl("web-strict", "/slow?ms=10000", "-H", f"x-test-id: {test_id}",
                                 version=version)
    took = time.monotonic() - started

    assert (status, body) in DEADLINE_ANSWERS
    assert STRICT_TIMEOUT <= took < 5.0
    assert await _next_cancelled(mesh) == test_id


async def test_callers_timeout_header_caps_the_call(mesh: Mesh) -> None:
    started = time.monotonic()
    status, body, _ = await curl("web", "/slow?ms=10000", "-H", "x-test-id: caller-timeout",
                                 "-H", "x-mesh-timeout-ms: 300")
    took = time.monotonic() - started

    assert (status, body) in DEADLINE_ANSWERS
    assert 0.3 <= took < 5.0
    assert await _next_cancelled(mesh) == "caller-timeout"


@pytest.mark.parametrize(("authority", "caller_ms", "most_ms"), [
    ("web", 2000, 2000),  # the caller's deadline, shortened by the time spent so far
    ("web-strict", 60_000, STRICT_TIMEOUT * 1000),  # the route's, shorter than the caller's
    ("web", None, 15_000),  # the cluster's default timeout
])
async def test_remaining_budget_is_passed_to_the_app(mesh: Mesh, authority: str,
                                                     caller_ms: int | None,
                                                     most_ms: float) -> None:
    options = ["-H", f"x-mesh-timeout-ms: {caller_ms}"] if caller_ms is not None else []

    status, body, _ = await curl(authority, "/echo", *options)

    passed = int(json.loads(body)["headers"]["x-mesh-timeout-ms"])
    assert status == 200
    assert most_ms * 0.5 < passed < most_ms


async def _next_cancelled(mesh: Mesh) -> Any:
    """The x-test-id of the next request the web app saw cancelled (waiting at most 5 s)."""
    return await asyncio.wait_for(mesh.web.cancelled.get(), 5.0)


@pytest.mark.parametrize("version", ["http1.1", "h2c"])
async def test_a_caller_that_hangs_up_cancels_the_apps_request(mesh: Mesh,
                                                              version: str) -> None:
    test_id = f"hang-up-{version}"
    # curl gives up after half a second; the mesh's own deadline (15 s) is far away.
    code, _, _ = await run_tool(
        "curl", "-sS", "--max-time", "0.5", *HTTP_VERSIONS[version],
        "--connect-to", f"web:80:{A_HOST}:{OUTBOUND}", "-H", f"x-test-id: {test_id}",
        "http://web/slow?ms=10000")

    assert code == 28  # curl: operation timed out
    assert await _next_cancelled(mesh) == test_id


async def test_a_caller_that_resets_its_stream_is_counted_as_reset(mesh: Mesh) -> None:
    test_id = "reset-by-caller"

    async def resets(sidecar: SidecarProcess, direction: str) -> float:
        return await sidecar.metric("mesh_sidecar_requests_total", cluster="web", code="reset",
                                    direction=direction)

    before = (await resets(mesh.a, "outbound"), await resets(mesh.w1, "inbound"))
    connection = await connect(A_HOST, OUTBOUND)
    try:
        stream = connection.open_stream([
            (":method", "GET"), (":scheme", "http"), (":authority", "web"),
            (":path", "/slow?ms=10000"), ("x-test-id", test_id)], end_stream=True)
        for _ in range(100):  # until the app has the request, at most 5 s
            if test_id in mesh.web.requests:
                break
            await asyncio.sleep(0.05)
        stream.reset()  # RST_STREAM(CANCEL), the connection stays open

        assert await _next_cancelled(mesh) == test_id
        for _ in range(100):  # the metrics are counted as the cancellation unwinds
            after = (await resets(mesh.a, "outbound"), await resets(mesh.w1, "inbound"))
            if after == (before[0] + 1, before[1] + 1):
                break
            await asyncio.sleep(0.05)
        assert after == (before[0] + 1, before[1] + 1)
    finally:
        await connection.shutdown(1.0)
