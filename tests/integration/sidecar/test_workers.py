"""A sidecar with two workers (``--concurrency 2``): real processes, real traffic.

    h2load ──▶ parent + worker 0, worker 1 "client" 127.0.20.40 ══mTLS══▶ W1 "web" (the mesh's)

The workers share the listeners (SO_REUSEPORT) and the load; the parent's one admin adds them
up; a worker that dies comes back with the configuration in force; a parent that goes takes
its workers with it. With a control plane, a policy change and a renewed certificate reach
every worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.control_plane_process import ControlPlaneProcess
from tests.integration.sidecar.apps import WebApp, start_web
from tests.integration.sidecar.conftest import (
    OUTBOUND,
    Mesh,
    SidecarProcess,
    client_config,
    h2load,
    run_tool,
    spawn_sidecar,
    static_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

HOST = "127.0.20.40"
CONNECTIONS = 32  # enough that both workers get some: SO_REUSEPORT hashes each connection


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (its workers), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while loop.time() < give_up:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_asyncio.fixture(loop_scope="package")
async def workers(mesh: Mesh, tmp_path: Path) -> AsyncIterator[SidecarProcess]:
    sidecar = static_sidecar("workers", HOST, "client", client_config(), mesh.pki, tmp_path,
                             "--concurrency", "2")
    with stopping([sidecar]):
        await sidecar.wait_ready()
        await until(lambda: len(children(sidecar.process.pid)) == 2, "two workers")
        yield sidecar


async def test_two_workers_share_the_load_and_one_admin_adds_it_up(
        workers: SidecarProcess) -> None:
    pids = children(workers.process.pid)
    before = {pid: cpu_seconds(pid) for pid in pids}

    result = await h2load("web", f"http://{HOST}:{OUTBOUND}/", "-n", "1600",
                          "-c", str(CONNECTIONS), "-m", "2")

    assert result.status_2xx == 1600, result.output
    spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    for seconds in spent.values():  # each served its share of the connections
        assert seconds > 0.15 * sum(spent.values()), spent
    assert await workers.metric("mesh_sidecar_requests_total", direction="outbound",
                                cluster="web", code="2xx") == 1600
    status, text = await workers.admin("/clusters")
    web = json.loads(text)["web"]
    assert status == 200
    assert web["workers"] == 2
    assert sum(e["streams_opened"] for e in web["endpoints"]) == 1600
    assert web["circuit_breaker"]["max_requests"]["max"] == 1024  # 512 each: the default
    per_worker = [json.loads((await workers.admin(f"/clusters?worker={i}"))[1])["web"]
                  for i in (0, 1)]
    assert sum(w["endpoints"][0]["streams_opened"] for w in per_worker) == 1600
    assert all(w["endpoints"][0]["streams_opened"] > 0 for w in per_worker), per_worker
    status, text = await workers.admin("/tap?limit=512")
    tapped = json.loads(text)
    assert status == 200
    assert len(tapped["requests"]) == 512
    assert [r["seq"] for r in tapped["requests"]] == sorted(r["seq"] for r in tapped["requests"])
    assert {r["status"] for r in tapped["requests"]} == {200}
    assert (await workers.admin("/clusters?worker=2"))[0] == 400


async def test_a_worker_that_dies_is_started_again_with_the_configuration(
        workers: SidecarProcess) -> None:
    await h2load("web", f"http://{HOST}:{OUTBOUND}/", "-n", "400", "-c", str(CONNECTIONS))
    counted = await workers.metric("mesh_sidecar_requests_total", direction="outbound",
                                   cluster="web", code="2xx")
    first = children(workers.process.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    async def both_answer() -> bool:
        answers = [await workers.admin(f"/clusters?worker={i}") for i in (0, 1)]
        return all(status == 200 and "web" in json.loads(text) for status, text in answers)
    await until_async(both_answer, "the worker to be started again, with the configuration")

    result = await h2load("web", f"http://{HOST}:{OUTBOUND}/", "-n", "800",
                          "-c", str(CONNECTIONS), "-m", "1")

    assert result.status_2xx == 800, result.output
    # What the killed worker had counted still counts: the counter does not go backwards.
    assert await workers.metric("mesh_sidecar_requests_total", direction="outbound",
                                cluster="web", code="2xx") == counted + 800
    assert f"(pid {victim}) exited with -9: starting it again" in workers.log_text()
    assert len(children(workers.process.pid) - first) == 1
    status, text = await workers.admin("/clusters?worker=0")
    assert (status, json.loads(text)["web"]["endpoints"][0]["streams_opened"] > 0) == (200, True)


async def test_a_worker_that_hangs_leaves_the_admin_answering_with_the_others(
        workers: SidecarProcess) -> None:
    await h2load("web", f"http://{HOST}:{OUTBOUND}/", "-n", "200", "-c", str(CONNECTIONS))
    counted = await workers.metric("mesh_sidecar_requests_total", direction="outbound",
                                   cluster="web", code="2xx")
    hung = min(children(workers.process.pid))
    os.kill(hung, signal.SIGSTOP)
    try:
        assert await workers.metric("mesh_sidecar_requests_total", direction="outbound",
                                    cluster="web", code="2xx") == counted
        status, text = await workers.admin("/clusters")
        assert (status, json.loads(text)["web"]["workers"]) == (200, 1)
        assert (await workers.admin("/tap"))[0] == 200
    finally:
        os.kill(hung, signal.SIGCONT)
    assert "no answer to metrics within 2 s" in workers.log_text()


async def test_a_parent_stopped_stops_its_workers_and_a_parent_killed_leaves_none(
        mesh: Mesh, tmp_path: Path) -> None:
    stopped = static_sidecar("stopped", HOST, "client", client_config(), mesh.pki, tmp_path,
                             "--concurrency", "2")
    with stopping([stopped]):
        await stopped.wait_ready()
        await until(lambda: len(children(stopped.process.pid)) == 2, "two workers")
        pids = children(stopped.process.pid)
        stopped.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(stopped.process.wait, 20)
    assert code == 0, stopped.log_text()
    assert not any(running(pid) for pid in pids)

    killed = static_sidecar("killed", HOST, "client", client_config(), mesh.pki, tmp_path,
                            "--concurrency", "2")
    with stopping([killed]):
        await killed.wait_ready()
        await until(lambda: len(children(killed.process.pid)) == 2, "two workers")
        pids = children(killed.process.pid)
        killed.process.kill()
        killed.process.wait(5)
        await until(lambda: not any(running(pid) for pid in pids),
                    "the orphaned workers to stop by themselves", timeout=15)


BUSY_HOST = "127.0.20.44"


async def test_a_port_taken_is_named_at_start(mesh: Mesh, tmp_path: Path) -> None:
    taken = socket.create_server((BUSY_HOST, OUTBOUND))  # no SO_REUSEPORT: not shareable
    try:
        sidecar = static_sidecar("busy", BUSY_HOST, "client", client_config(), mesh.pki,
                                 tmp_path, "--concurrency", "2")
        with stopping([sidecar]):
            code = await asyncio.to_thread(sidecar.process.wait, 20)
    finally:
        taken.close()
    assert code == 2, sidecar.log_text()
    assert f"sidecar: cannot listen on {BUSY_HOST}:{OUTBOUND}: Address already in use" in \
        sidecar.log_text()


# -- with a control plane -----------------------------------------------------------------------

CP_HOST, SHOPPER_HOST, ORDERS_HOST = "127.0.20.41", "127.0.20.42", "127.0.20.43"
ORDERS_APP = ("127.0.20.143", 8080)
VALIDITY = 8  # seconds a certificate is valid: renewed after 0.7 of it (sidecar/identity.py)


def policy(lb_policy: str) -> dict[str, Any]:
    # Connections idle out at once: a call after the renewal opens one with the new certificate.
    return {"clusters": [{"name": "orders", "app_protocol": "HTTP1", "lb_policy": lb_policy,
                          "pool": {"idle_timeout": "0.1s"}}]}


async def test_a_policy_change_and_a_renewed_certificate_reach_every_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = WebApp("orders")
    runner = await start_web(app, *ORDERS_APP)
    monkeypatch.setenv("MESH_CERT_VALIDITY", f"{VALIDITY}s")
    cp = ControlPlaneProcess(tmp_path, CP_HOST)
    cp.write_policy(policy("LEAST_REQUEST"))
    try:
        await cp.start()

        async def joining(name: str, host: str, service: str, *args: str) -> SidecarProcess:
            return spawn_sidecar(name, host, tmp_path, "--service", service, "--control-plane",
                                 cp.grpc, "--bootstrap-ca", str(cp.pki / "ca.crt"),
                                 "--join-token-file", str(await cp.join_token_file(service)),
                                 "--cert-dir", str(tmp_path / name), *args)

        shopper = await joining("shopper", SHOPPER_HOST, "shopper", "--concurrency", "2")
        orders = await joining("orders", ORDERS_HOST, "orders",
                               "--app", "{}:{}".format(*ORDERS_APP))
        with stopping([shopper, orders]):
            await asyncio.gather(shopper.wait_ready(), orders.wait_ready())

            cp.write_policy(policy("ROUND_ROBIN"))

            async def everyone_round_robin() -> bool:
                views = [json.loads((await shopper.admin(f"/clusters?worker={i}"))[1])
                         for i in (0, 1)]
                return all(v.get("orders", {}).get("lb_policy") == "ROUND_ROBIN" for v in views)
            await until_async(everyone_round_robin, "both workers to take the new policy")

            await until(lambda: "certificate renewed" in shopper.log_text(),
                        "the parent to renew the certificate", timeout=3 * VALIDITY)
            renewed = x509.load_pem_x509_certificate(
                (tmp_path / "shopper" / "cert.pem").read_bytes())
            digest = hashlib.sha256(renewed.public_bytes(Encoding.DER)).hexdigest()
            await asyncio.sleep(0.3)  # the connections made before it idle out
            seen = set()
            for _ in range(20):  # new connections, spread over both workers
                code, out, err = await run_tool("curl", "-sS", "-H", "Host: orders",
                                                f"http://{SHOPPER_HOST}:{OUTBOUND}/echo")
                assert code == 0, err
                seen.add(json.loads(out)["headers"]["x-forwarded-client-cert"])
            assert all(f"Hash={digest}" in xfcc for xfcc in seen), (digest, seen)
    finally:
        cp.stop()
        await runner.cleanup()


async def until_async(check: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while loop.time() < give_up:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")

