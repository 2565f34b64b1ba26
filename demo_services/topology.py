"""The shop's topology: which instances exist, and the address and ports of each.

Every instance (an app and its sidecar) gets its own loopback address, as a pod gets its own
IP, and the same ports everywhere, as in the compose file where each pair shares a network
namespace:

    sidecar   15000 admin (/metrics /clusters /config_dump /ready)
              15001 outbound: the app's calls to other services, h2c or HTTP/1.1
              15006 inbound: peer sidecars, HTTP/2 + mTLS
    app        8080 the service itself (gRPC over h2c; the frontend HTTP/1.1)
               8081 its fault knobs (``meshctl fault``)

    127.0.10.1       the control plane (gRPC 15012, operator API 15014) and Prometheus (9090)
    127.0.10.3, .4   with ``ha``: control-plane replicas 2 and 3 (the same two ports)
    127.0.10.61..63  with ``ha``: the etcd members the replicas share (clients 2379, peers 2380)
    127.0.10.2       loadgen: a sidecar with no app, the load generator's way into the mesh
    127.0.10.10      frontend
    127.0.10.20      orders
    127.0.10.31..33  inventory-1..3
    127.0.10.41..43  payments-1..3
    127.0.10.50      auditor: a proxyless gRPC client, with no sidecar and no port of its own
                     (grpcio picks its connections' source address; the address is its
                     place in the plan, as a pod's IP would be)

``net`` (the first three numbers) can be changed, so a second mesh (a test's) can run beside
a person's demo without a port in common. ``ha`` makes the control plane three replicas that
keep their shared state in a three-member etcd cluster; every sidecar is given all three.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "shop"
TRUST_DOMAIN = "cluster.local"
SIDECAR_ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
APP_PORT = 8080
APP_ADMIN_PORT = 8081
CONTROL_PLANE_PORT = 15012
API_PORT = 15014
PROMETHEUS_PORT = 9090
DASHBOARD_PORT = 15020  # meshctl dashboard's default port
REPLICAS = {"inventory": 3, "payments": 3}
HOSTS = {"loadgen": 2, "frontend": 10, "orders": 20, "inventory": 31, "payments": 41,
         "auditor": 50}
HA_REPLICAS = 3  # control-plane replicas with ``ha``, and as many etcd members
CONTROL_PLANE_HOSTS = (1, 3, 4)
ETCD_HOST = 61  # the first member's; the others follow


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One instance of a service: its sidecar, and its app unless it has none (loadgen)."""

    name: str  # "payments-2"; the service itself when it has one replica
    service: str
    ip: str
    app: str | None  # the module under demo_services/ that is the app, or None
    http1: bool = False  # the app speaks HTTP/1.1 (else h2c)

    @property
    def sidecar_admin(self) -> str:
        return f"{self.ip}:{SIDECAR_ADMIN_PORT}"

    @property
    def outbound(self) -> str:
        return f"{self.ip}:{OUTBOUND_PORT}"

    @property
    def inbound(self) -> str:
        return f"{self.ip}:{INBOUND_PORT}"

    @property
    def app_address(self) -> str:
        return f"{self.ip}:{APP_PORT}"

    @property
    def app_admin(self) -> str:
        return f"{self.ip}:{APP_ADMIN_PORT}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxylessClient:
    """A workload with no sidecar: grpcio's own xDS client takes its configuration from the
    control plane (``demo_services/auditor.py``)."""

    name: str
    service: str
    ip: str
    app: str  # the module under demo_services/
    target: str  # its channel's target, xds:///<name>


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPlaneReplica:
    """One control-plane process: the sidecars' gRPC port and the operator API."""

    name: str  # "controlplane", or "controlplane-2" with ``ha``
    ip: str

    @property
    def listen(self) -> str:
        return f"{self.ip}:{CONTROL_PLANE_PORT}"

    @property
    def api(self) -> str:
        return f"{self.ip}:{API_PORT}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Every instance of the local mesh, on addresses ``net``.x."""

    net: str = "127.0.10"
    ha: bool = False  # three control-plane replicas sharing an etcd cluster, instead of one

    def __post_init__(self) -> None:
        parts = self.net.split(".")
        if len(parts) != 3 or parts[0] != "127" or not all(
                p.isdigit() and 0 <= int(p) <= 255 for p in parts):
            raise ValueError(f"net {self.net!r}: want the first three numbers of a loopback "
                             f"address, like 127.0.10")

    def control_planes(self) -> list[ControlPlaneReplica]:
        """In start order; the first is the one that makes the operator token."""
        if not self.ha:
            return [ControlPlaneReplica(name="controlplane", ip=f"{self.net}.1")]
        return [ControlPlaneReplica(name=f"controlplane-{n + 1}", ip=f"{self.net}.{host}")
                for n, host in enumerate(CONTROL_PLANE_HOSTS[:HA_REPLICAS])]

    @property
    def control_plane(self) -> str:
        """What a sidecar's ``--control-plane`` says: every replica's gRPC address."""
        return ",".join(replica.listen for replica in self.control_planes())

    @property
    def api(self) -> str:
        """The first replica's operator API (any replica's would do)."""
        return self.control_planes()[0].api

    def etcd_hosts(self) -> dict[str, str]:
        """With ``ha``, each etcd member's name and address (none without)."""
        if not self.ha:
            return {}
        return {f"etcd-{n + 1}": f"{self.net}.{ETCD_HOST + n}" for n in range(HA_REPLICAS)}

    @property
    def prometheus(self) -> str:
        return f"{self.net}.1:{PROMETHEUS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"{self.net}.1:{DASHBOARD_PORT}"

    def instances(self) -> list[Instance]:
        """In start order: callees before callers, the load generator's sidecar last."""
        out = []
        for service, app in (("inventory", "inventory"), ("payments", "payments"),
                             ("orders", "orders"), ("frontend", "frontend"),
                             ("loadgen", None)):
            count = REPLICAS.get(service, 1)
            for i in range(count):
                out.append(Instance(
                    name=f"{service}-{i + 1}" if count > 1 else service, service=service,
                    ip=f"{self.net}.{HOSTS[service] + i}", app=app,
                    http1=service == "frontend"))
        return out

    @property
    def auditor(self) -> ProxylessClient:
        """The proxyless client: it reads the inventory's catalogue every second."""
        return ProxylessClient(name="auditor", service="auditor",
                               ip=f"{self.net}.{HOSTS['auditor']}", app="auditor",
                               target="xds:///inventory")

    def instance(self, name: str) -> Instance:
        """The instance called ``name``.

        Raises:
            KeyError: no such instance; the message lists those there are.
        """
        for instance in self.instances():
            if instance.name == name:
                return instance
        names = ", ".join(i.name for i in self.instances())
        raise KeyError(f"no instance {name!r} in the demo (have {names})")

    def of(self, service: str) -> list[Instance]:
        """The instances of ``service`` (empty when there is no such service)."""
        return [i for i in self.instances() if i.service == service]
