"""Attacks on the control plane's trust, made with grpcio and curl (clients we did not write).

A real ``python -m controlplane`` process on loopback, with its own mesh CA; every test plays
one attacker — no certificate, an account of another namespace, a discovery node its
certificate does not prove, a certificate of another CA or an expired one, a spent join token,
a missing or wrong operator token — next to the caller who is allowed. Each checks what the
control plane answers (the status), what it keeps (the registry, read over the operator API),
and what it reports (``/metrics``, and its log: one line per refusal, naming the peer, never a
secret).

grpcio's BoringSSL checks the control plane's certificate against the mesh CA and the name
``controlplane`` (a DNS SAN of it), as a sidecar does; it presents a client certificate only
when the test gives it one.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from certs.pki import CertificateAuthority, create_ca, issue_workload, make_csr, write_ca
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import AuthorizationPolicy, ClusterLoadAssignment, Endpoint
from mesh.proto.discovery_pb2 import DiscoveryRequest, DiscoveryResponse, Node
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    SignCertificateRequest,
    SignCertificateResponse,
)
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ENDPOINTS

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[3]
TRUST_DOMAIN = "cluster.local"
SIGN_CERTIFICATE = "/mesh.v1.Identity/SignCertificate"
REGISTER = "/mesh.v1.Registry/Register"
HEARTBEAT = "/mesh.v1.Registry/Heartbeat"
DEREGISTER = "/mesh.v1.Registry/Deregister"
STREAM_RESOURCES = "/mesh.v1.AggregatedDiscoveryService/StreamResources"
ORDERS_INSTANCE = "shop/orders@127.0.0.1:15006"
CALL_TIMEOUT = 10.0  # seconds: a deadline so that a hung call fails the test, never asserted on
LEASE_TTL = 300.0  # seconds: no registration lapses while a test looks at it
GRPC_OPTIONS = [
    ("grpc.ssl_target_name_override", "controlplane"),  # a DNS SAN of the control plane's cert
    ("grpc.enable_http_proxy", 0),  # loopback: never through a proxy the environment names
]
AUTHORIZATION_POLICY = """\
authorization:
- service: payments
  namespace: shop
  rules:
  - principals: [cluster.local/ns/shop/sa/orders]
    paths: [/shop.Payments/Charge]
- service: orders
  namespace: shop
  rules:
  - principals: [cluster.local/ns/shop/sa/frontend]
"""


def identity(service: str, namespace: str = "shop") -> SpiffeId:
    return SpiffeId(trust_domain=TRUST_DOMAIN, namespace=namespace, service=service)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the control plane, as a process ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class ControlPlaneProcess:
    """A ``python -m controlplane`` process, its CA, and the means to talk to it as anyone."""

    popen: subprocess.Popen[str]
    grpc_port: int
    api: str
    pki: Path
    ca: CertificateAuthority
    log_file: Path
    channels: list[Any] = field(default_factory=list)

    @property
    def operator_token(self) -> str:
        return (self.pki / "operator.token").read_text().strip()

    def log(self) -> str:
        return self.log_file.read_text()

    # gRPC, with grpcio

    def channel(self, caller: SpiffeId | None, *, ca: CertificateAuthority | None = None,
                now: datetime | None = None) -> Any:
        """A grpcio channel presenting a certificate for ``caller`` (None: none at all)."""
        if caller is None:
            return self.channel_with(None, None)
        workload = issue_workload(ca or self.ca, caller, timedelta(hours=1), now=now)
        return self.channel_with(workload.certificate.public_bytes(Encoding.PEM),
                                 key_pem(workload.private_key))

    def channel_with(self, certificate_pem: bytes | None, private_key_pem: bytes | None) -> Any:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.pki / "ca.crt").read_bytes(),
            private_key=private_key_pem, certificate_chain=certificate_pem)
        channel = grpc.secure_channel(f"127.0.0.1:{self.grpc_port}", credentials,
                                      options=GRPC_OPTIONS)
        self.channels.append(channel)
        return channel

    # the operator API, with curl

    def curl(self, method: str, path: str, *, token: str | None = None, body: str | None = None,
             authorization: str | None = None, path_as_is: bool = False) -> HttpAnswer:
        """One request with curl; ``token`` as a bearer token, or ``authorization`` verbatim."""
        args = ["curl", "--silent", "--show-error", "--include", "--noproxy", "*",
                "--max-time", str(CALL_TIMEOUT), "--request", method]
        if token is not None:
            authorization = f"Bearer {token}"
        if authorization is not None:
            args += ["--header", f"Authorization: {authorization}"]
        if body is not None:
            args += ["--data-binary", body]
        if path_as_is:
            args.append("--path-as-is")
        done = subprocess.run([*args, f"http://{self.api}{path}"], capture_output=True,
                              timeout=CALL_TIMEOUT + 5, check=True)
        head, _, text = done.stdout.decode().partition("\r\n\r\n")
        status_line, *lines = head.split("\r\n")
        headers = {name.lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        return HttpAnswer(int(status_line.split()[1]), headers, text)

    def operator(self, method: str, path: str, body: str | None = None) -> Any:
        """The JSON answer to an operator's (authorized) request."""
        answer = self.curl(method, path, token=self.operator_token, body=body)
        assert answer.status == 200, answer
        return json.loads(answer.body)

    def instances(self) -> list[tuple[str, str]]:
        """Every registered instance, with the identity that owns it."""
        return sorted((row["instance"], row["owner"])
                      for service in self.operator("GET", "/services")
                      for row in self.operator("GET", f"/endpoints/{service['service']}?"
                                                      f"namespace={service['namespace']}"))

    def metric(self, name: str, **labels: str) -> float:
        """A sample of ``/metrics`` (0 when it has none yet); read without a credential."""
        answer = self.curl("GET", "/metrics")
        assert answer.status == 200, answer
        for family in text_string_to_metric_families(answer.body):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def refused(self, call: str, reason: str) -> float:
        return self.metric("mesh_controlplane_refused_total", call=call, reason=reason)


def start_controlplane(tmp: Path) -> ControlPlaneProcess:
    # The CA is made three hours in the past, so a certificate that expired can be issued.
    ca = create_ca(trust_domain=TRUST_DOMAIN, now=datetime.now(UTC) - timedelta(hours=3))
    write_ca(ca, tmp / "pki")
    api = f"127.0.0.1:{free_port()}"
    log_file = tmp / "controlplane.log"
    with log_file.open("w") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "--pki-dir", str(tmp / "pki"),
             "--listen", "127.0.0.1:0", "--api", api, "--lease-ttl", str(LEASE_TTL),
             "--log-level", "INFO"],
            cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=log, text=True)
    assert popen.stdout is not None
    line = popen.stdout.readline()  # "control plane: gRPC on 127.0.0.1:PORT, API on http://..."
    if not line.startswith("control plane: gRPC on"):
        popen.kill()
        popen.wait()
        raise AssertionError(f"the control plane did not start: {line}{log_file.read_text()}")
    grpc_port = int(line.split(",")[0].rsplit(":", 1)[1])
    return ControlPlaneProcess(popen, grpc_port, api, tmp / "pki", ca, log_file)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = start_controlplane(tmp_path)
    try:
        yield process
    finally:
        for channel in process.channels:
            channel.close()
        process.popen.terminate()
        try:
            process.popen.wait(10)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(5)


# -- calls -----------------------------------------------------------------------------------------


def call(channel: Any, path: str, request: Any, response_type: Any) -> Any:
    """A unary call; the answer, or the grpc.RpcError it failed with."""
    method = channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                 response_deserializer=response_type.FromString)
    try:
        return method(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return error


def register(channel: Any, service: str = "orders", namespace: str = "", *,
             address: str = "127.0.0.1", port: int = 15006) -> Any:
    return call(channel, REGISTER,
                RegisterRequest(service=service, namespace=namespace,
                                endpoint=Endpoint(address=address, port=port)),
                RegisterResponse)


def failed(outcome: Any, code: Any) -> str:
    """The details of a call that had to fail with ``code``."""
    assert isinstance(outcome, grpc.RpcError), f"the call succeeded: {outcome}"
    assert outcome.code() == code, (outcome.code(), outcome.details())
    details: str = outcome.details()
    return details


class Stream:
    """One StreamResources call: requests sent one at a time, responses read one at a time.

    The request stream stays open until :meth:`close`: a discovery stream whose requests end
    is over, and the control plane need not answer it.
    """

    def __init__(self, channel: Any) -> None:
        self._requests: queue.Queue[DiscoveryRequest | None] = queue.Queue()
        method = channel.stream_stream(STREAM_RESOURCES,
                                       request_serializer=DiscoveryRequest.SerializeToString,
                                       response_deserializer=DiscoveryResponse.FromString)
        self._call = method(iter(self._requests.get, None), timeout=CALL_TIMEOUT)

    def send(self, request: DiscoveryRequest) -> None:
        self._requests.put(request)

    def receive(self) -> DiscoveryResponse:
        response: DiscoveryResponse = next(self._call)
        return response

    def until_error(self) -> tuple[list[DiscoveryResponse], Any]:
        """Every response until the call fails, and its grpc.RpcError."""
        responses = []
        try:
            for response in self._call:
                responses.append(response)
        except grpc.RpcError as error:
            return responses, error
        raise AssertionError(f"the stream ended with OK after {responses}")

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


def authorization_seen(cp: ControlPlaneProcess, caller: SpiffeId, node: Node,
                       resource_names: list[str]) -> list[tuple[str, str]]:
    """The (namespace, service) of each authorization policy a stream as ``caller`` gets."""
    stream = Stream(cp.channel(caller))
    try:
        stream.send(DiscoveryRequest(node=node, type_url=AUTHORIZATION,
                                     resource_names=resource_names))
        response = stream.receive()
    finally:
        stream.close()
    assert response.type_url == AUTHORIZATION
    policies = []
    for packed in response.resources:
        policy = AuthorizationPolicy()
        assert packed.Unpack(policy)
        policies.append((policy.namespace, policy.service))
    return policies


# -- no client certificate -------------------------------------------------------------------------


def anonymous_call(cp: ControlPlaneProcess, name: str) -> tuple[Any, list[DiscoveryResponse]]:
    """Call ``name`` with no client certificate: its failure and any discovery responses."""
    channel = cp.channel(None)
    if name == "StreamResources":
        stream = Stream(channel)
        stream.send(DiscoveryRequest(node=Node(id="anon", service="orders", namespace="shop"),
                                     type_url=CLUSTERS))
        try:
            responses, error = stream.until_error()
        finally:
            stream.close()
        return error, responses
    requests = {
        "Register": (REGISTER, RegisterRequest(
            service="orders", namespace="shop",
            endpoint=Endpoint(address="127.0.0.1", port=15007)), RegisterResponse),
        "Heartbeat": (HEARTBEAT, HeartbeatRequest(instance=ORDERS_INSTANCE,
                                                  health=Endpoint.UNHEALTHY), HeartbeatResponse),
        "Deregister": (DEREGISTER, DeregisterRequest(instance=ORDERS_INSTANCE),
                       DeregisterResponse),
        # No join token: a renewal, which only a certificate may ask for.
        "SignCertificate": (SIGN_CERTIFICATE, SignCertificateRequest(csr_pem=orders_csr()),
                            SignCertificateResponse),
    }
    path, request, response_type = requests[name]
    return call(channel, path, request, response_type), []


def orders_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return make_csr(key, identity("orders")).public_bytes(Encoding.PEM)


@pytest.mark.parametrize("name", ["StreamResources", "Register", "Heartbeat", "Deregister",
                                  "SignCertificate"])
def test_a_caller_without_a_certificate_is_unauthenticated(cp: ControlPlaneProcess,
                                                           name: str) -> None:
    # A live instance, for the anonymous Heartbeat and Deregister to aim at.
    assert register(cp.channel(identity("orders"))).instance == ORDERS_INSTANCE
    registered = cp.instances()
    before = cp.refused(name, "no_certificate")

    error, responses = anonymous_call(cp, name)

    details = failed(error, grpc.StatusCode.UNAUTHENTICATED)
    assert details == (f"{name} needs a certificate of the mesh CA (mTLS): no client "
                       f"certificate was presented; only SignCertificate with a join token may "
                       f"be called without one")
    assert responses == []
    assert cp.instances() == registered  # not added, renewed as unhealthy, or removed
    assert cp.operator("GET", "/status")["subscribers"] == 0
    assert cp.refused(name, "no_certificate") == before + 1
    assert f"WARNING controlplane: {name} from 127.0.0.1 refused (UNAUTHENTICATED)" in cp.log()


# -- registration from another namespace -----------------------------------------------------------


def test_an_account_of_another_namespace_may_not_register_the_service(
        cp: ControlPlaneProcess) -> None:
    outcome = register(cp.channel(identity("orders", namespace="evil")), namespace="shop")

    details = failed(outcome, grpc.StatusCode.PERMISSION_DENIED)
    assert details.startswith(f"spiffe://{TRUST_DOMAIN}/ns/evil/sa/orders may not register "
                              f"service 'orders' in namespace 'shop' (only spiffe://"
                              f"{TRUST_DOMAIN}/ns/shop/sa/orders")
    assert cp.instances() == []
    assert cp.refused("Register", "not_allowed") == 1
    assert "Register from 127.0.0.1 refused (PERMISSION_DENIED): spiffe://cluster.local/ns/" \
           "evil/sa/orders may not register" in cp.log()

    # The service's own account registers it: the refusal was about the caller.
    response = register(cp.channel(identity("orders")), namespace="shop")

    assert response.instance == ORDERS_INSTANCE
    assert cp.instances() == [(ORDERS_INSTANCE, f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/orders")]


def test_a_service_of_another_namespace_cannot_take_over_a_clusters_name(
        cp: ControlPlaneProcess) -> None:
    """shop/orders is served as cluster ``orders.shop`` (no policy names it). An account named
    ``orders.shop`` in the default namespace registers its own service, whose default cluster
    name would also be ``orders.shop``: registered names may not hold '.', as in Kubernetes,
    and the cluster still holds shop/orders' endpoints only."""
    assert register(cp.channel(identity("orders"))).instance == ORDERS_INSTANCE
    impostor = register(cp.channel(identity("orders.shop", namespace="default")), "orders.shop",
                        port=15007)
    assert "may not hold '.'" in failed(impostor, grpc.StatusCode.INVALID_ARGUMENT)

    stream = Stream(cp.channel(identity("frontend")))
    try:
        stream.send(DiscoveryRequest(node=Node(id="f1"), type_url=ENDPOINTS,
                                     resource_names=["orders.shop"]))
        response = stream.receive()
    finally:
        stream.close()

    (packed,) = response.resources
    assignment = ClusterLoadAssignment()
    assert packed.Unpack(assignment)
    assert assignment.cluster_name == "orders.shop"
    assert [e.instance for e in assignment.endpoints] == [ORDERS_INSTANCE]


# -- a discovery node its certificate does not prove -----------------------------------------------


@pytest.mark.parametrize(("claim", "expected"), [
    pytest.param(Node(id="n1", service="payments"),
                 "node 'n1' claims service 'payments', but its certificate proves "
                 "spiffe://cluster.local/ns/shop/sa/orders (service 'orders')",
                 id="another-service"),
    pytest.param(Node(id="n1", service="orders", namespace="evil"),
                 "node 'n1' claims namespace 'evil', but its certificate proves "
                 "spiffe://cluster.local/ns/shop/sa/orders (namespace 'shop')",
                 id="another-namespace"),
])
def test_a_node_claim_that_is_not_the_certificate_ends_the_stream(
        cp: ControlPlaneProcess, claim: Node, expected: str) -> None:
    stream = Stream(cp.channel(identity("orders")))
    stream.send(DiscoveryRequest(node=claim, type_url=AUTHORIZATION))
    try:
        responses, error = stream.until_error()
    finally:
        stream.close()

    assert failed(error, grpc.StatusCode.PERMISSION_DENIED) == expected
    assert responses == []
    assert cp.refused("StreamResources", "node_mismatch") == 1
    (logged,) = [line for line in cp.log().splitlines() if f"refused: {expected}" in line]
    assert "WARNING controlplane.discovery: stream 1 from 127.0.0.1:" in logged


def test_a_node_that_changes_its_claim_mid_stream_is_cut_off(cp: ControlPlaneProcess) -> None:
    stream = Stream(cp.channel(identity("orders")))
    try:
        stream.send(DiscoveryRequest(node=Node(id="n1", service="orders", namespace="shop"),
                                     type_url=AUTHORIZATION))
        first = stream.receive()
        # The ACK of the first response, now claiming to be payments.
        stream.send(DiscoveryRequest(node=Node(id="n1", service="payments"),
                                     type_url=AUTHORIZATION, version_info=first.version_info,
                                     response_nonce=first.nonce))
        responses, error = stream.until_error()
    finally:
        stream.close()

    details = failed(error, grpc.StatusCode.PERMISSION_DENIED)
    assert "claims service 'payments'" in details
    assert "proves spiffe://cluster.local/ns/shop/sa/orders" in details
    assert responses == []
    assert cp.refused("StreamResources", "node_mismatch") == 1


# -- another service's authorization view ----------------------------------------------------------


@pytest.mark.parametrize(("caller", "node", "resource_names", "expected"), [
    pytest.param(identity("orders"), Node(id="n1"), [], [("shop", "orders")],
                 id="orders-claiming-nothing"),
    pytest.param(identity("orders"), Node(id="n1", service="orders", namespace="shop"), [],
                 [("shop", "orders")], id="orders-claiming-orders"),
    pytest.param(identity("orders"), Node(id="n1"), ["payments/0"], [],
                 id="orders-asking-for-payments-by-name"),
    pytest.param(identity("payments"), Node(id="n1"), [], [("shop", "payments")],
                 id="shop-payments"),
    pytest.param(identity("payments", namespace="evil"), Node(id="n1"), [], [],
                 id="evil-payments"),
])
def test_a_stream_receives_the_authorization_of_the_identity_it_proved(
        cp: ControlPlaneProcess, caller: SpiffeId, node: Node, resource_names: list[str],
        expected: list[tuple[str, str]]) -> None:
    assert cp.operator("POST", "/policy", AUTHORIZATION_POLICY) == {"version": 1}

    assert authorization_seen(cp, caller, node, resource_names) == expected


# -- the operator API ------------------------------------------------------------------------------


OPERATOR_REQUESTS = [
    pytest.param("POST", "/tokens", '{"service": "orders", "namespace": "shop"}', id="tokens"),
    pytest.param("POST", "/policy", AUTHORIZATION_POLICY, id="policy"),
    pytest.param("GET", "/status", None, id="status"),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_REQUESTS)
def test_the_operator_api_refuses_a_request_without_the_operator_token(
        cp: ControlPlaneProcess, method: str, path: str, body: str | None) -> None:
    right = cp.operator_token
    wrong = "f" * len(right)
    attempts = [
        (None, "no_credential", "no operator credential was presented"),
        ("Bearer ", "no_credential", "no operator credential was presented"),
        (f"Basic {right}", "no_credential", "no operator credential was presented"),
        (f"Bearer {wrong}", "wrong_credential",
         "the operator token presented is not this control plane's"),
        (f"Bearer {right}x", "wrong_credential",
         "the operator token presented is not this control plane's"),
    ]
    for authorization, reason, problem in attempts:
        before = cp.refused("OperatorAPI", reason)

        answer = cp.curl(method, path, body=body, authorization=authorization)

        assert answer.status == 401, (authorization, answer)
        assert answer.headers["www-authenticate"] == 'Bearer realm="asyncmesh operator API"'
        error = json.loads(answer.body)["error"]
        assert error.startswith(f"{problem}: the operator API needs 'Authorization: Bearer "
                                f"<operator token>' (the token is in ")
        assert wrong not in answer.body and right not in answer.body
        assert cp.refused("OperatorAPI", reason) == before + 1
    log = cp.log()
    assert f"WARNING controlplane.api: {method} {path!r} from 127.0.0.1 refused: " in log
    assert wrong not in log and right not in log
    policy = cp.curl("GET", "/policy", token=right)
    assert policy.body.startswith("# version 0\n")  # no refused POST /policy was applied

    answer = cp.curl(method, path, body=body, token=right)

    assert answer.status == 200, answer
    assert "WARNING controlplane.api" not in cp.log()[len(log):]


def test_metrics_and_healthz_need_no_credential(cp: ControlPlaneProcess) -> None:
    healthz = cp.curl("GET", "/healthz")
    metrics = cp.curl("GET", "/metrics")

    assert (healthz.status, healthz.body) == (200, "ok\n")
    assert metrics.status == 200
    assert "mesh_controlplane_refused_total" in metrics.body
    assert cp.refused("OperatorAPI", "no_credential") == 0


def test_the_open_paths_open_nothing_else(cp: ControlPlaneProcess) -> None:
    sneaky = [("POST", "/metrics"), ("POST", "/healthz"), ("GET", "/healthz/../status"),
              ("POST", "/metrics/../tokens"), ("GET", "/%73tatus")]
    for method, path in sneaky:
        answer = cp.curl(method, path, body="{}" if method == "POST" else None,
                         path_as_is=True)

        assert answer.status == 401, (method, path, answer)
    assert cp.refused("OperatorAPI", "no_credential") == len(sneaky)


# -- the log ---------------------------------------------------------------------------------------


FORGED = "2026-12-03 07:17:08,708 INFO controlplane.audit: policy version 9 applied"


def forge_by_operator_api(cp: ControlPlaneProcess) -> None:
    """An anonymous request whose path is a newline and a log line."""
    path = "/x%0a" + FORGED.replace(" ", "%20")
    assert cp.curl("GET", path, path_as_is=True).status == 401


def forge_by_register(cp: ControlPlaneProcess) -> None:
    """A workload registering an address that is a newline and a log line."""
    outcome = register(cp.channel(identity("orders")), address=f"10.0.0.1\n{FORGED}")
    failed(outcome, grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("forge", [
    pytest.param(forge_by_operator_api, id="operator-api"),
    pytest.param(forge_by_register, id="register"),
])
def test_a_refused_request_cannot_forge_a_line_of_the_log(
        cp: ControlPlaneProcess, forge: Callable[[ControlPlaneProcess], None]) -> None:
    forge(cp)

    lines = cp.log().splitlines()
    assert [line for line in lines if "refused" in line]  # the refusal is logged...
    assert not [line for line in lines if line.startswith(FORGED)]  # ...as one line


# -- a certificate the mesh CA does not vouch for --------------------------------------------------


def rogue_ca_channel(cp: ControlPlaneProcess) -> Any:
    """The same trust domain and identity, from a CA of the attacker's."""
    return cp.channel(identity("orders"), ca=create_ca(trust_domain=TRUST_DOMAIN))


def expired_channel(cp: ControlPlaneProcess) -> Any:
    """A certificate of the mesh CA, valid for an hour two hours ago."""
    return cp.channel(identity("orders"), now=datetime.now(UTC) - timedelta(hours=2))


def workload_as_ca_channel(cp: ControlPlaneProcess) -> Any:
    """orders' own (valid) certificate posing as a CA: it signs one for payments."""
    orders = issue_workload(cp.ca, identity("orders"), timedelta(hours=1))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments")]))
        .issuer_name(orders.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(str(identity("payments")))]), critical=False)
        .sign(orders.private_key, hashes.SHA256())
    )
    chain = forged.public_bytes(Encoding.PEM) + orders.certificate.public_bytes(Encoding.PEM)
    return cp.channel_with(chain, key_pem(key))


@pytest.mark.parametrize(("channel_for", "reason"), [
    pytest.param(rogue_ca_channel, "not issued by the mesh CA", id="another-ca"),
    pytest.param(expired_channel, "expired (certificate has expired)", id="expired"),
    pytest.param(workload_as_ca_channel, "invalid CA certificate", id="workload-as-ca"),
])
def test_a_certificate_the_mesh_ca_does_not_vouch_for_fails_the_handshake(
        cp: ControlPlaneProcess, channel_for: Callable[[ControlPlaneProcess], Any],
        reason: str) -> None:
    channel = channel_for(cp)

    outcome = register(channel)

    failed(outcome, grpc.StatusCode.UNAVAILABLE)
    channel.close()  # else grpcio may try again, and fail again, while the test looks
    assert cp.instances() == []
    assert cp.metric("mesh_controlplane_tls_handshakes_failed_total") >= 1
    assert cp.metric("mesh_controlplane_registrations_total", result="refused") == 0
    assert f"failed: client certificate refused: {reason}" in cp.log()
    assert "TLS handshake from 127.0.0.1:" in cp.log()


# -- join tokens and the identity certified --------------------------------------------------------


def mint(cp: ControlPlaneProcess, service: str, namespace: str, **extra: float) -> str:
    body = json.dumps({"service": service, "namespace": namespace, **extra})
    answer = cp.operator("POST", "/tokens", body)
    assert answer["identity"] == str(identity(service, namespace))
    token: str = answer["token"]
    return token


def sign(cp: ControlPlaneProcess, csr_pem: bytes, token: str) -> Any:
    return call(cp.channel(None), SIGN_CERTIFICATE,
                SignCertificateRequest(csr_pem=csr_pem, join_token=token),
                SignCertificateResponse)


def test_a_join_token_is_spent_by_its_first_use(cp: ControlPlaneProcess) -> None:
    token = mint(cp, "orders", "shop")
    assert sign(cp, orders_csr(), token).certificate_pem

    replay = sign(cp, orders_csr(), token)

    details = failed(replay, grpc.StatusCode.PERMISSION_DENIED)
    assert details == "join token unknown or already used (tokens are single use)"
    assert cp.refused("SignCertificate", "token_unknown_or_used") == 1
    assert cp.metric("mesh_controlplane_certificates_total", result="issued") == 1
    assert "SignCertificate from 127.0.0.1 refused (PERMISSION_DENIED)" in cp.log()
    assert token not in cp.log()


def test_an_expired_join_token_is_refused(cp: ControlPlaneProcess) -> None:
    # The shortest life a token may have (a ttl of 0 is refused: see test_operator_api.py):
    # it is over before the call below can reach the control plane.
    token = mint(cp, "orders", "shop", ttl=0.000001)

    details = failed(sign(cp, orders_csr(), token), grpc.StatusCode.PERMISSION_DENIED)

    assert details == f"join token for {identity('orders')} expired"
    assert cp.refused("SignCertificate", "token_expired") == 1
    assert token not in cp.log()


def by_join_token(cp: ControlPlaneProcess, csr_pem: bytes) -> Any:
    return sign(cp, csr_pem, mint(cp, "orders", "shop"))


def by_renewal(cp: ControlPlaneProcess, csr_pem: bytes) -> Any:
    return call(cp.channel(identity("orders")), SIGN_CERTIFICATE,
                SignCertificateRequest(csr_pem=csr_pem), SignCertificateResponse)


@pytest.mark.parametrize("certify", [pytest.param(by_join_token, id="join-token"),
                                     pytest.param(by_renewal, id="renewal")])
def test_the_certificate_proves_shop_orders_whatever_the_csr_asks(
        cp: ControlPlaneProcess, certify: Callable[[ControlPlaneProcess, bytes], Any]) -> None:
    """A token minted for shop/orders, or a certificate of shop/orders renewing, gets
    shop/orders, though the CSR asks to be the control plane itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = make_csr(key, identity("controlplane", namespace="mesh-system"))

    issued = certify(cp, greedy.public_bytes(Encoding.PEM))

    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(identity("orders"))]
    # And it proves shop/orders, nothing else, to the registry.
    channel = cp.channel_with(issued.certificate_pem, key_pem(key))
    failed(register(channel, "controlplane", namespace="mesh-system"),
           grpc.StatusCode.PERMISSION_DENIED)
    assert register(channel).instance == ORDERS_INSTANCE
    assert cp.instances() == [(ORDERS_INSTANCE, str(identity("orders")))]
