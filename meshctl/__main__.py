"""meshctl: inspect and change the mesh through the control plane's operator API.

    meshctl status                        every replica (its store revision, readiness) and
                                          its discovery streams: versions sent, ACKed, NACKs
    meshctl services                      services and their instances
    meshctl endpoints SERVICE             one service's endpoints and their leases
    meshctl policy                        the policy in force (YAML)
    meshctl apply -f FILE                 apply a policy file (every problem shown if rejected)
    meshctl token create SERVICE [--namespace NS] [--ttl SECONDS]
    meshctl dashboard [--listen HOST:PORT]  the live dashboard (docs/dashboard.md)

The API address comes from ``--api`` or ``MESH_CP_API`` (default 127.0.0.1:15014). Every
command sends the operator token, found by itself: the file ``MESH_OPERATOR_TOKEN_FILE``
names, else ``$MESH_PKI_DIR/operator.token``, else — for an API on a loopback address only —
the first ``operator.token`` there is in the local demo's ``.mesh/demo/pki``
(``$DEMO_STATE_DIR/pki``), ``.mesh/compose`` (copied there by ``scripts/compose-up``) and
``.mesh/pki`` (the control plane's default PKI folder).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshctl import dashboard, demo, experiment, fault, load, proxyless, simulate


class ApiError(Exception):
    """The control plane answered with an error, or could not be reached."""


TOKEN_FILE = "operator.token"


def operator_token_file(api: str) -> Path | None:
    """Where the operator token for ``api`` is, by the search order in this module's docstring.

    A token found in one of the default folders is sent to a loopback address only: it is
    this machine's, and a token sent in clear to whatever answers elsewhere is a token given
    away. For another address, name it (``MESH_OPERATOR_TOKEN_FILE`` or ``MESH_PKI_DIR``).
    """
    named = os.environ.get("MESH_OPERATOR_TOKEN_FILE")
    if named:
        return Path(named)
    pki = os.environ.get("MESH_PKI_DIR")
    if pki and (Path(pki) / TOKEN_FILE).is_file():
        return Path(pki) / TOKEN_FILE
    if not _loopback(api):
        return None
    for folder in (f"{os.environ.get('DEMO_STATE_DIR') or demo.DEFAULT_STATE_DIR}/pki",
                   ".mesh/compose", ".mesh/pki"):
        if (Path(folder) / TOKEN_FILE).is_file():
            return Path(folder) / TOKEN_FILE
    return None


def _loopback(api: str) -> bool:
    host = api.rpartition(":")[0].strip("[]") or api
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def call(api: str, method: str, path: str, body: bytes | None = None) -> Any:
    """One request to the operator API, with the operator token; JSON answers are decoded."""
    request = urllib.request.Request(f"http://{api}{path}", data=body, method=method)
    token_file = operator_token_file(api)
    if token_file is not None:
        try:
            request.add_header("Authorization", f"Bearer {token_file.read_text().strip()}")
        except OSError as error:
            raise ApiError(f"cannot read the operator token: {error}") from None
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        if error.code == 401:
            detail += (f"\n(meshctl sent the token in {token_file})" if token_file else
                       "\n(meshctl found no operator token for this address: set "
                       "MESH_OPERATOR_TOKEN_FILE)")
        raise ApiError(f"{method} {path}: HTTP {error.code}\n{detail}") from None
    except OSError as error:
        raise ApiError(f"cannot reach the control plane at {api}: {error}") from None
    return json.loads(data) if kind.startswith("application/json") else data.decode()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as a plain aligned table."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def status(api: str) -> str:
    """The control plane's state; with several replicas, each one's (asked at its own API)."""
    data = call(api, "GET", "/status")
    views, unreachable = {data["replica"]["name"]: data}, {}
    for replica in data.get("replicas", []):
        name = replica["name"]
        if name not in views and replica.get("api"):
            try:
                views[name] = call(replica["api"], "GET", "/status")
            except ApiError as error:
                unreachable[name] = str(error).splitlines()[0]
    streams = [(name, stream) for name, view in sorted(views.items())
               for stream in view["streams"]]
    kinds = [stream.get("protocol", "mesh.v1") for _, stream in streams]
    out = [f"trust domain {data['trust_domain']}, policy version {data['policy_version']}, "
           f"{data['instances']} instances, {len(streams)} discovery streams "
           f"({kinds.count('mesh.v1')} sidecars, {kinds.count('xds.v3')} proxyless gRPC)"]
    if data["policy_error"]:
        out.append(f"last policy rejected:\n{data['policy_error']}")
    several = len(views) + len(unreachable) > 1
    if several or data["replica"]["store"] != "memory":
        out.append(table([_replica_row(name, view) for name, view in sorted(views.items())]
                         + [{"replica": name, "problem": problem}
                            for name, problem in sorted(unreachable.items())],
                         ["replica", "api", "store", "revision", "ready", "policy", "streams",
                          "problem"]))
    rows = []
    for name, stream in streams:
        for type_name, state in sorted(stream["types"].items()):
            rows.append({"replica": name, "node": stream["node"] or stream["peer"],
                         "protocol": stream.get("protocol", "mesh.v1"), "type": type_name,
                         "sent": state["sent"], "acked": state["acked"],
                         "in sync": "yes" if state["sent"] == state["acked"] else "NO",
                         "nacks": state["nacks"], "last nack": state["last_nack"]})
    if rows:
        out.append(table(rows, ["replica"] * several + [
            "node", "protocol", "type", "sent", "acked", "in sync", "nacks", "last nack"]))
    unsupported = data.get("xds", {}).get("unsupported", [])
    if unsupported:
        out.append("what proxyless gRPC clients cannot apply as written (xds.v3):")
        out += [f"  {item['resource']}: {item['message']}" for item in unsupported]
    return "\n".join(out)


def _replica_row(name: str, view: dict[str, Any]) -> dict[str, Any]:
    replica = view["replica"]
    api = next((r.get("api", "") for r in view.get("replicas", []) if r["name"] == name), "")
    return {"replica": name, "api": api, "store": replica["store"],
            "revision": replica["revision"], "ready": "yes" if replica["ready"] else "NO",
            "policy": view["policy_version"], "streams": len(view["streams"]),
            "problem": replica["problem"] or ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default=os.environ.get("MESH_CP_API", "127.0.0.1:15014"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    sub.add_parser("services")
    endpoints = sub.add_parser("endpoints")
    endpoints.add_argument("service")
    sub.add_parser("policy")
    apply = sub.add_parser("apply")
    apply.add_argument("-f", "--file", type=Path, required=True)
    token = sub.add_parser("token")
    token.add_argument("action", choices=["create"])
    token.add_argument("service")
    token.add_argument("--namespace", default="default")
    token.add_argument("--ttl", type=float)
    # meshctl/demo.py, ...
    for module in (demo, fault, load, experiment, proxyless, simulate, dashboard):
        module.register(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return int(args.run(args))
    api = args.api
    try:
        match args.command:
            case "status":
                print(status(api))
            case "services":
                print(table(call(api, "GET", "/services"),
                            ["service", "namespace", "instances", "healthy"]))
            case "endpoints":
                rows = call(api, "GET", f"/endpoints/{args.service}")
                print(table(rows, ["instance", "namespace", "address", "port", "weight", "zone",
                                   "health", "owner", "lease"]))
            case "policy":
                print(call(api, "GET", "/policy"), end="")
            case "apply":
                text = args.file.read_bytes()
                result = call(api, "POST", f"/policy?source={args.file}", text)
                print(f"applied {args.file}: policy version {result['version']}")
            case "token":
                body = {"service": args.service, "namespace": args.namespace}
                if args.ttl is not None:
                    body["ttl"] = args.ttl
                result = call(api, "POST", "/tokens", json.dumps(body).encode())
                print(result["token"])
                print(f"(single use, for {result['identity']})", file=sys.stderr)
    except (ApiError, OSError) as error:
        print(f"meshctl: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
