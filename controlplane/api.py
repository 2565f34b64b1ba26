"""The operator API (HTTP/JSON, loopback by default): what ``meshctl`` reads and writes.

Every request needs ``Authorization: Bearer <operator token>`` (:mod:`controlplane.operator`)
except ``GET /metrics``, ``GET /healthz`` and ``GET /readyz``; without it the answer is 401 and
says what is missing. Every accepted change (a policy applied, a join token minted) is one line
of the ``controlplane.audit`` log: what, for whom, by which credential, from where.

    GET  /healthz              200 "ok" (no credential needed: a liveness probe)
    GET  /readyz               200 "ready" while this replica follows the state store; 503 and
                               why not (it still serves discovery from its last state)
    GET  /status               this replica (name, store, revision, readiness), every replica
                               the store knows, policy version, last rejection, convergence
                               (time from the
                               last change to the last ACK), every discovery stream — our
                               sidecars' (mesh.v1) and proxyless gRPC's (xds.v3) — with its
                               per-type sent / ACKed versions and NACKs, the policy version
                               it runs in full and the NACK that holds it back from a newer
                               one (``?streams=0``: none), and what of the policy gRPC
                               cannot apply, per resource
    GET  /services             services (with their namespace) and instance counts
    GET  /endpoints/{service}  the endpoints of one service (``?namespace=``: of one namespace)
    GET  /prometheus/targets   every instance whose sidecar published its admin port, in
                               Prometheus' HTTP service discovery format (below)
    GET  /policy               the policy in force, as YAML
    GET  /policy/history       the versions this replica had in force since it started
                               (the last HISTORY of controlplane/policy_history.py),
                               oldest first, each as YAML
    POST /policy               apply a YAML policy (400 with every problem when rejected);
                               ``If-Match: <version>``: only if the policy is still at that
                               version, else 409 naming both versions (without it, the change
                               is based on the version in force at this replica)
    POST /tokens               {"service": ..., "namespace": ..., "ttl": s} → a join token
    GET  /metrics              Prometheus

``/prometheus/targets`` lets Prometheus find every sidecar's ``/metrics`` in the registry
(``http_sd_configs`` with ``authorization: {type: Bearer, credentials_file: <operator
token>}``): a list of target groups, one per instance, ``{"targets": ["<ip>:<admin_port>"],
"labels": {"service": ..., "namespace": ..., "mesh_instance": <instance id>}}``. An instance
whose admin is not reachable at its registered address published no port and is left out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.discovery import DiscoveryServer
from controlplane.policy import PolicyError, to_yaml
from controlplane.server import ControlPlane
from controlplane.store import Conflict, StoreUnavailable
from mesh.identity import DEFAULT_NAMESPACE, SpiffeId
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.resources import short_name

audit = logging.getLogger("controlplane.audit")
log = logging.getLogger("controlplane.api")

OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})  # read-only, no credential needed
OPERATOR = web.RequestKey("operator", str)  # the fingerprint of the credential a request used
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(cp: ControlPlane) -> web.Application:
    """The aiohttp application serving ``cp``."""
    routes = web.RouteTableDef()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            reason, problem = "no_credential", "no operator credential was presented"
        elif not cp.operator.accepts(presented.strip()):
            reason, problem = "wrong_credential", "the operator token presented is not this " \
                                                  "control plane's"
        else:
            request[OPERATOR] = cp.operator.fingerprint
            return await handler(request)
        cp.metrics.refused("OperatorAPI", reason)
        # The path as a repr: it is the caller's, and may hold a newline to forge a log line.
        log.warning("%s %r from %s refused: %s", request.method, request.path,
                    request.remote, problem)
        return web.json_response(
            {"error": f"{problem}: the operator API needs 'Authorization: Bearer <operator "
                      f"token>' (the token is in {cp.operator_token_file}; meshctl reads it "
                      f"from there)"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="asyncmesh operator API"'})

    def by(request: web.Request) -> str:
        return f"by operator token {request[OPERATOR]} from {request.remote}"

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        if cp.state.ready:
            return web.Response(text="ready\n")
        return web.Response(text=f"not ready: {cp.state.problem}\n", status=503)

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        version, _policy = cp.policy.current
        streams = []
        servers = [] if request.query.get("streams") == "0" else [cp.discovery, cp.xds]
        for server in servers:
            for sub in server.subscriptions.values():
                streams.append({
                    "id": sub.id, "protocol": server.dialect.name, "node": sub.node.id,
                    "service": sub.node.service, "namespace": sub.node.namespace,
                    "peer": sub.peer, "identity": str(sub.identity),
                    "types": {short_name(t): {"sent": s.sent_version, "acked": s.acked_version,
                                              "nacks": s.nacks, "last_nack": s.last_nack}
                              for t, s in sub.types.items()},
                    # the newest policy version it runs in full, and the NACK holding it back
                    "policy_version": sub.rollout.policy_version,
                    "nack": None if (nack := sub.rollout.nack) is None else {
                        "type": short_name(nack.type_url), "message": nack.message,
                        "policy_version": nack.policy_version},
                })
        return web.json_response({
            "trust_domain": cp.trust_domain,
            "replica": {"name": cp.name, "store": cp.store.where, "revision": cp.state.revision,
                        "ready": cp.state.ready, "problem": cp.state.problem},
            "replicas": [{"name": name, **record}
                         for name, record in sorted(cp.replicas.running.items())],
            "policy_version": version,
            "policy_error": str(cp.policy.last_error) if cp.policy.last_error else None,
            "instances": len(cp.registry.instances()),
            "subscribers": len(cp.discovery.subscriptions) + len(cp.xds.subscriptions),
            "convergence": convergence(cp.discovery),
            "xds": {
                "convergence": convergence(cp.xds),
                # every policy a proxyless gRPC workload cannot apply as written, per resource
                "unsupported": [{"resource": w.resource, "message": w.message}
                                for w in cp.xds_snapshot().warnings],
            },
            "streams": streams,
        })

    @routes.get("/services")
    async def services(_: web.Request) -> web.Response:
        rows = []
        declared = {(c.namespace or DEFAULT_NAMESPACE, c.name)
                    for c in cp.policy.current[1].clusters}
        for namespace, service in sorted(set(cp.registry.services()) | declared):
            endpoints = cp.registry.endpoints(namespace, service)
            healthy = sum(1 for e in endpoints if e.health == Endpoint.HEALTHY)
            rows.append({"service": service, "namespace": namespace,
                         "instances": len(endpoints), "healthy": healthy})
        return web.json_response(rows)

    @routes.get("/endpoints/{service}")
    async def endpoints(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        namespace = request.query.get("namespace")
        rows: list[dict[str, Any]] = []
        for instance in cp.registry.instances():
            if instance.service == service and namespace in (None, instance.namespace):
                row = MessageToDict(instance.endpoint, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
                row["namespace"] = instance.namespace
                row["owner"] = str(instance.owner)
                row["lease"] = f"{instance.lease:x}"
                rows.append(row)
        return web.json_response(rows)

    @routes.get("/prometheus/targets")
    async def prometheus_targets(_: web.Request) -> web.Response:
        groups = [{"targets": [scrape_target(i.endpoint.address, i.endpoint.admin_port)],
                   "labels": {"service": i.service, "namespace": i.namespace,
                              "mesh_instance": i.id}}
                  for i in cp.registry.instances() if i.endpoint.admin_port]
        return web.json_response(groups)

    @routes.get("/policy")
    async def get_policy(_: web.Request) -> web.Response:
        version, policy = cp.policy.current
        return web.Response(text=f"# version {version}\n{to_yaml(policy)}",
                            content_type="application/yaml")

    @routes.get("/policy/history")
    async def policy_history(_: web.Request) -> web.Response:
        """``{"versions": [{"version", "source", "applied_at", "policy"}, ...]}``.

        This replica's memory, not the store's: the store keeps only the policy in force, and
        each replica remembers the one in force when it started (``applied_at`` null: the
        store does not say when it was written) and every version its watch brought since,
        in order (:mod:`controlplane.policy_history`). ``applied_at`` is when this replica
        took the version, in Unix seconds.
        """
        return web.json_response({"versions": [
            {"version": v.version, "source": v.source,
             "applied_at": None if v.applied_at is None else round(v.applied_at, 3),
             "policy": to_yaml(v.policy)}
            for v in cp.policy.history]})

    @routes.post("/policy")
    async def post_policy(request: web.Request) -> web.Response:
        source = request.query.get("source", "api")
        match = request.headers.get("If-Match", "").strip().strip('"')
        if match and not match.isdigit():
            return web.json_response({"error": f"If-Match {match!r}: want the policy version "
                                               f"the change is based on, a number"}, status=400)
        try:
            version = await cp.policy.apply_text(await request.text(), source,
                                                 based_on=int(match) if match else None)
        except PolicyError as error:
            audit.info("policy from %s rejected %s", source, by(request))
            return web.json_response({"error": str(error)}, status=400)
        except Conflict as error:
            audit.info("policy from %s refused (conflict) %s", source, by(request))
            return web.json_response({"error": str(error), "version": error.current},
                                     status=409)
        except StoreUnavailable as error:
            return web.json_response({"error": f"policy not applied: {error}"}, status=503)
        audit.info("policy version %d applied from %s %s", version, source, by(request))
        return web.json_response({"version": version})

    @routes.post("/tokens")
    async def create_token(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            identity = SpiffeId(trust_domain=cp.trust_domain,
                                namespace=str(body.get("namespace", DEFAULT_NAMESPACE)),
                                service=str(body["service"]))
            ttl = float(body["ttl"]) if "ttl" in body else None
            token = await cp.state.write(lambda: cp.tokens.create(identity, ttl))
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            return web.json_response({"error": f"bad token request: {error!r}"}, status=400)
        except StoreUnavailable as error:
            return web.json_response({"error": f"no token made: {error}"}, status=503)
        audit.info("join token minted for %s (valid %.0fs) %s", identity,
                   cp.tokens.ttl if ttl is None else ttl, by(request))
        return web.json_response({"token": token, "identity": str(identity)})

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(cp.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[authenticate])
    app.add_routes(routes)
    return app


def scrape_target(address: str, port: int) -> str:
    """``ip:port``, an IPv6 address in brackets (``[::1]:15000``), as Prometheus reads it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def convergence(server: DiscoveryServer) -> dict[str, Any]:
    """How the last change reached the streams of one dialect."""
    return {
        "count": server.convergences,
        "unacked": server.unacked,
        "last_change_to_last_ack_ms": None if server.last_convergence is None
        else round(server.last_convergence * 1000, 3),
        # When that last ACK came, in seconds of the control plane's clock (time.monotonic:
        # one clock for every process of a machine, so a benchmark can time a change made at
        # one replica to the last ACK at another).
        "last_ack_monotonic": server.last_acked_at,
    }


async def start_api(cp: ControlPlane, host: str, port: int) -> web.AppRunner:
    """Serve the operator API; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(make_app(cp), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
