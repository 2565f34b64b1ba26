"""A service's inbound_rate_limit, applied by its own sidecar after authorization, with curl
(over mTLS, HTTP/2, with the client's mesh certificate) as the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.sidecar.conftest import (
    INBOUND,
    WEB_APP,
    Mesh,
    principal,
    run_tool,
    static_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

W3_HOST = "127.0.20.5"  # a third sidecar of `web`, in front of the same app as W1


async def curl(mesh: Mesh, caller: str) -> tuple[int, str]:
    """One HTTP/2 request over mTLS to W3's inbound port as ``caller``: (status, headers)."""
    code, out, err = await run_tool(
        "curl", "-sS", "--http2", "--max-time", "10", "-o", "/dev/null", "-D", "-",
        "--cacert", str(mesh.pki.ca_cert), "--cert", str(mesh.pki.cert(caller)),
        "--key", str(mesh.pki.key(caller)), "--resolve", f"web:{INBOUND}:{W3_HOST}",
        f"https://web:{INBOUND}/")
    assert code == 0, f"curl failed ({code}): {err}"
    status = int(out.split()[1])
    return status, out.lower()


async def test_the_limit_admits_its_burst_and_a_denied_caller_spends_nothing(
        mesh: Mesh, tmp_path: Path) -> None:
    config = {
        "clusters": [{"name": "web", "app_protocol": "HTTP1",
                      "inbound_rate_limit": {"max_tokens": 3, "fill_interval": "3600s"}}],
        "authorization": [{"service": "web", "action": "ALLOW",
                           "rules": [{"principals": [principal("client")]}]}],
    }
    w3 = static_sidecar("w3", W3_HOST, "web", config, mesh.pki, tmp_path,
                        "--app", "{}:{}".format(*WEB_APP))
    with stopping([w3]):
        await w3.wait_ready()
        # The intruder is refused by authorization, before the bucket: it takes no token.
        assert [(await curl(mesh, "intruder"))[0] for _ in range(5)] == [403] * 5
        answers = [await curl(mesh, "client") for _ in range(5)]
        assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
        assert "x-mesh-ratelimited: inbound web" in answers[-1][1]
        assert await w3.metric("mesh_sidecar_rate_limited_total", direction="inbound",
                               limit="inbound web") == 2
