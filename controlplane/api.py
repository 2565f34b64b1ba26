"""The operator API (HTTP/JSON, loopback by default): what ``meshctl`` reads and writes.

    GET  /status               policy version, last rejection, convergence (time from the
                               last change to the last ACK), every discovery stream with its
                               per-type sent / ACKed versions and NACKs (``?streams=0``: none)
    GET  /services             services with instance counts
    GET  /endpoints/{service}  the endpoints of one service
    GET  /policy               the policy in force, as YAML
    POST /policy               apply a YAML policy (400 with every problem when rejected)
    POST /tokens               {"service": ..., "namespace": ..., "ttl": s} → a join token
    GET  /metrics              Prometheus
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.policy import PolicyError, to_yaml
from controlplane.server import ControlPlane
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.resources import short_name


def make_app(cp: ControlPlane) -> web.Application:
    """The aiohttp application serving ``cp``."""
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        version, _policy = cp.policy.current
        streams = []
        subscriptions = [] if request.query.get("streams") == "0" else \
            list(cp.discovery.subscriptions.values())
        for sub in subscriptions:
            streams.append({
                "id": sub.id, "node": sub.node.id, "service": sub.node.service,
                "peer": sub.peer, "identity": str(sub.identity) if sub.identity else None,
                "types": {short_name(t): {"sent": s.sent_version, "acked": s.acked_version,
                                          "nacks": s.nacks, "last_nack": s.last_nack}
                          for t, s in sub.types.items()},
            })
        return web.json_response({
            "trust_domain": cp.trust_domain,
            "policy_version": version,
            "policy_error": str(cp.policy.last_error) if cp.policy.last_error else None,
            "instances": len(cp.registry.instances()),
            "subscribers": len(cp.discovery.subscriptions),
            "convergence": {
                "count": cp.discovery.convergences,
                "unacked": cp.discovery.unacked,
                "last_change_to_last_ack_ms": None if cp.discovery.last_convergence is None
                else round(cp.discovery.last_convergence * 1000, 3),
            },
            "streams": streams,
        })

    @routes.get("/services")
    async def services(_: web.Request) -> web.Response:
        rows = []
        for service in sorted(set(cp.registry.services()) |
                              {c.name for c in cp.policy.current[1].clusters}):
            endpoints = cp.registry.endpoints(service)
            healthy = sum(1 for e in endpoints if e.health == Endpoint.HEALTHY)
            rows.append({"service": service, "instances": len(endpoints), "healthy": healthy})
        return web.json_response(rows)

    @routes.get("/endpoints/{service}")
    async def endpoints(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        rows: list[dict[str, Any]] = []
        for instance in cp.registry.instances():
            if instance.service == service:
                row = MessageToDict(instance.endpoint, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
                row["owner"] = str(instance.owner)
                row["lease_remaining_s"] = round(instance.expires_at - cp.clock.now(), 2)
                rows.append(row)
        return web.json_response(rows)

    @routes.get("/policy")
    async def get_policy(_: web.Request) -> web.Response:
        version, policy = cp.policy.current
        return web.Response(text=f"# version {version}\n{to_yaml(policy)}",
                            content_type="application/yaml")

    @routes.post("/policy")
    async def post_policy(request: web.Request) -> web.Response:
        source = request.query.get("source", "api")
        try:
            cp.policy.apply_text(await request.text(), source)
        except PolicyError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response({"version": cp.policy.current[0]})

    @routes.post("/tokens")
    async def create_token(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            identity = SpiffeId(trust_domain=cp.trust_domain,
                                namespace=str(body.get("namespace", "default")),
                                service=str(body["service"]))
        except (KeyError, ValueError) as error:
            return web.json_response({"error": f"bad token request: {error}"}, status=400)
        ttl = float(body["ttl"]) if "ttl" in body else None
        token = cp.tokens.create(identity, ttl)
        return web.json_response({"token": token, "identity": str(identity)})

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(cp.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes(routes)
    return app


async def start_api(cp: ControlPlane, host: str, port: int) -> web.AppRunner:
    """Serve the operator API; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(make_app(cp), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
