"""What ``meshctl demo up`` prints once the mesh is up: every instance, with ``--ha`` every
control-plane replica and etcd member (and its PID, to kill it), the first load's summary, and
where to look next."""

from __future__ import annotations

from pathlib import Path

from demo_services import etcd_cluster
from demo_services.load_report import summary
from demo_services.loadgen import LoadResult
from demo_services.local_mesh import ORDER, LocalMesh


def print_summary(mesh: LocalMesh, result: LoadResult | None) -> None:
    """The tables and pointers ``meshctl demo up`` ends with."""
    t, state = mesh.topology, mesh.state_dir
    rows = [["INSTANCE", "APP", "FAULT KNOBS", "SIDECAR ADMIN"]]
    for i in t.instances():
        rows.append([i.name, i.app_address if i.app else "-",
                     f"http://{i.app_admin}/faults" if i.app else "-",
                     f"http://{i.sidecar_admin}/clusters"])
    auditor = t.auditor
    rows.append([auditor.name, f"calls {auditor.target}", "-", "none: proxyless gRPC"])
    _print_table(rows)
    if t.ha:
        _print_table([["CONTROL PLANE", "PID", "GRPC (SIDECARS)", "OPERATOR API"]] + [
            [r.name, _pid(mesh, r.name), r.listen, f"http://{r.api}"]
            for r in t.control_planes()])
        _print_table([["ETCD MEMBER", "PID", "CLIENTS", "PEERS", "DATA"]] + [
            [name, _pid(mesh, name), f"{ip}:{etcd_cluster.CLIENT_PORT}",
             f"{ip}:{etcd_cluster.PEER_PORT}", str(state / "etcd" / name)]
            for name, ip in t.etcd_hosts().items()])
    if result is not None:
        print()
        print(summary(result))
    loadgen, orders = t.instance("loadgen"), t.instance("orders")
    prom = f"http://{t.prometheus}/targets" if mesh.options.prometheus else \
        "not installed (apt-get install prometheus, then demo up again)"
    env = f"DEMO_STATE_DIR={state} " if state != Path(".mesh/demo") else ""
    audit_log = state / "logs" / f"app:{auditor.name}.log"
    print(f"""
The mesh is up. Where to look:
  dashboard      http://{t.dashboard}/   (topology, golden metrics, inside a cluster, policy, top)
  the shop       curl -s -H 'host: frontend' http://{loadgen.outbound}/products
                 curl -s -H 'host: frontend' -d '{ORDER}' http://{loadgen.outbound}/orders
  a sidecar      http://{orders.sidecar_admin}/clusters   (endpoints: in flight, latency, ejected)
                 http://{orders.sidecar_admin}/config_dump   /metrics   /ready
  control plane  meshctl --api {t.api} status     (also: services, endpoints inventory, policy)
  proxyless      {audit_log}   (the auditor: a line a call;
                 its xDS stream is the xds.v3 one in meshctl status)
  the policy     {state / 'policy' / 'shop.yaml'} (edit it: sidecars have the change in a second)
  prometheus     {prom}
  more load      {env}meshctl load --rate 100 --duration 20
  break things   {env}meshctl fault payments --replica 2 --crash
                 {env}meshctl fault inventory --brownout 10 --error-rate 0.5 --latency 100ms
  logs           {state / 'logs'}/{_failover_hint(mesh)}
Stop it with Ctrl-C here, or: {env}meshctl demo down""", flush=True)


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    print()
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def _pid(mesh: LocalMesh, name: str) -> str:
    return next((str(r.pid) for r in mesh.records if r.name == name), "-")


def _failover_hint(mesh: LocalMesh) -> str:
    """With ``ha``: how to kill a replica or an etcd member and watch the mesh carry on."""
    if not mesh.topology.ha:
        return ""
    logs = mesh.state_dir / "logs"
    replica, member = _pid(mesh, "controlplane-2"), _pid(mesh, "etcd-2")
    return f"""
  fail over      kill {replica}   (controlplane-2; its sidecars move to another replica:
                 grep 'lost: moving' {logs}/sidecar:*.log)
                 kill {member}   (etcd-2; two members of three are a majority, nothing stops:
                 {logs}/etcd-1.log)"""
