"""`meshctl demo up --ha`: three control-plane replicas on a three-member etcd cluster, one
killed under load, and `demo down` leaving nothing.

The mesh runs on 127.0.57.x (replicas on .1, .3, .4; etcd members on .61-63) with its state in
a temporary folder. The replica killed is the one holding the most sidecars' discovery
streams, with SIGKILL, by the PID its state file records: the orders placed while it dies all
succeed, its sidecars move to the other two, and every sidecar still knows every endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo_services.etcd_cluster import EtcdError, etcd_binary
from demo_services.loadgen import HttpClient, LoadPlan, run_load
from demo_services.processes import Record, alive
from tests.integration.demo.commands import meshctl
from tests.integration.demo.sockets import listening

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
NET = "127.0.57"
ORDER = b'{"sku": "tea", "quantity": 1}'
RATE = 20.0  # orders per second
MOVED_WITHIN = 5.0  # seconds for the killed replica's sidecars to stream from another


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The HA demo's state folder; whatever was started is stopped at the end, by its PIDs."""
    try:
        etcd_binary()
    except EtcdError as error:
        pytest.skip(str(error))
    folder = tmp_path / "state"
    try:
        yield folder
    finally:
        if (folder / "state.json").exists():
            meshctl(folder, "demo", "down")


def _status(api: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://{api}/status",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def _sidecar_streams(api: str, token: str) -> set[str]:
    """The nodes of the sidecars (mesh.v1 streams) a replica serves."""
    return {s["node"] for s in _status(api, token)["streams"] if s["protocol"] == "mesh.v1"}


def _streaming_at(apis: list[str], token: str) -> set[str]:
    """The nodes of the sidecars the replicas at ``apis`` serve, together."""
    return set().union(*(_sidecar_streams(api, token) for api in apis))


async def _orders(loadgen_outbound: str, seconds: float) -> dict[str, int]:
    client = HttpClient(f"http://{loadgen_outbound}/orders", method="POST", body=ORDER,
                        headers={"host": "frontend", "content-type": "application/json"},
                        connections=8)
    result = await run_load(client, LoadPlan(rate=RATE, duration=seconds), "POST /orders")
    return dict(result.recorder.outcomes)


async def test_a_replica_killed_under_load_costs_no_order_and_down_leaves_nothing(
        state_dir: Path) -> None:
    started = time.monotonic()
    up = await asyncio.to_thread(meshctl, state_dir, "demo", "up", "--ha", "--detach",
                                 "--net", NET, "--state-dir", str(state_dir),
                                 "--load-duration", "0", timeout=90)
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"\nmeshctl demo up --ha: {time.monotonic() - started:.1f} s")
    for n, host in ((1, 1), (2, 3), (3, 4)):
        assert f"controlplane-{n}" in up.stdout and f"{NET}.{host}:15012" in up.stdout
    for n in (1, 2, 3):
        assert f"etcd-{n}" in up.stdout and f"{NET}.{60 + n}:2379" in up.stdout
    state = json.loads((state_dir / "state.json").read_text())
    records = {r["name"]: Record.from_json(r) for r in state["processes"]}
    token = (state_dir / "pki" / "operator.token").read_text().strip()
    instances = {i["name"]: i for i in state["instances"]}
    loadgen = instances["loadgen"]["outbound"]

    # Every sidecar was given the three replicas, and each replica keeps its state in etcd.
    replicas = {r["name"]: r for r in state["control_planes"]}
    assert len(replicas) == 3 and len(state["etcd"]) == 3
    every = ",".join(r["listen"] for r in replicas.values())
    assert all(every in records[f"sidecar:{name}"].argv for name in instances)
    store = "etcd://" + ",".join(m["endpoint"] for m in state["etcd"])
    assert all(store in records[name].argv for name in replicas)
    served = {name: _sidecar_streams(r["api"], token) for name, r in replicas.items()}
    assert sum(len(s) for s in served.values()) == len(instances), served

    assert await _orders(loadgen, 2.0) == {"201": 40}

    # The replica with the most sidecars dies, by its PID, while orders are placed.
    victim = max(served, key=lambda name: len(served[name]))
    record = records[victim]
    load = asyncio.create_task(_orders(loadgen, 4.0))
    await asyncio.sleep(1.0)
    assert alive(record)
    os.kill(record.pid, signal.SIGKILL)
    killed = time.monotonic()
    survivors = [r["api"] for n, r in replicas.items() if n != victim]
    everyone = set().union(*served.values())
    while await asyncio.to_thread(_streaming_at, survivors, token) != everyone:
        assert time.monotonic() - killed < MOVED_WITHIN, "sidecars did not move"
        await asyncio.sleep(0.1)
    took = time.monotonic() - killed
    outcomes = await load
    print(f"killed {victim} (pid {record.pid}, {len(served[victim])} sidecars): all on the "
          f"other two in {took:.2f} s; orders meanwhile: {outcomes}")
    assert not alive(record)
    assert outcomes == {"201": 80}, "a killed control-plane replica cost orders"
    # Each sidecar that used it says so in its log ("control plane ... lost: moving to ...").
    theirs = {name for name, i in instances.items()
              if any(f"@{i['ip']}:" in node for node in served[victim])}
    said = {name for name in instances if "lost: moving to" in
            (state_dir / "logs" / f"sidecar:{name}.log").read_text()}
    assert len(theirs) == len(served[victim]) and theirs <= said, (theirs, said)
    assert await _orders(loadgen, 1.0) == {"201": 20}

    down = await asyncio.to_thread(meshctl, state_dir, "demo", "down", "--state-dir",
                                   str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    print(down.stdout.strip(), f"(whole test {time.monotonic() - started:.1f} s)")
    _assert_nothing_left(records, state_dir)


def _assert_nothing_left(records: dict[str, Record], state_dir: Path) -> None:
    """No process of the mesh, no socket listening on its addresses, no state but the logs."""
    assert [name for name, r in records.items() if alive(r)] == []
    assert listening(NET) == []
    assert sorted(p.name for p in state_dir.iterdir()) == ["logs"]
