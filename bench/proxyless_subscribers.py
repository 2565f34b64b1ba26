"""Proxyless grpcio subscribers for the fan-out benchmark: the policy they need, one process of
them per control-plane replica.

The process is :mod:`bench.grpc_xds_clients` (grpcio alone). grpcio reads one bootstrap per
process, and a bootstrap names one control plane, so each replica gets its own process with a
bootstrap naming it and carrying the subscribers' certificate. Their channels call
``xds:///churn-<i>``; :data:`POLICY` routes every such name to the churn cluster (the
instances ``spiffe://…/ns/bench/sa/churn`` registers) through one ``*`` virtual host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.control_plane_replicas import Replica
from meshctl.proxyless import bootstrap_config
from sidecar.identity import CertificateFiles

POLICY = """\
clusters:
- {name: churn, namespace: bench}
routes:
- name: churn
  virtual_hosts:
  - name: any
    domains: ["*"]
    routes:
    - match: {prefix: /}
      route: {cluster: churn}
"""


def bootstrap(pki: Path, replica: Replica) -> Path:
    """A bootstrap for grpcio clients of ``replica``, with the subscribers' certificate
    (``pki/subscriber/``)."""
    folder = pki / "subscriber"
    files = CertificateFiles(folder / "subscriber.crt", folder / "subscriber.key",
                             pki / "ca.crt")
    path = pki / f"bootstrap-{replica.grpc_port}.json"
    path.write_text(json.dumps(bootstrap_config(
        service="subscriber", namespace="bench", zone="", control_plane=replica.grpc,
        files=files, node="bench/subscriber@grpcio")))
    return path


def start(pki: Path, replicas: list[Replica], counts: list[int],
          started: list[subprocess.Popen[Any]]) -> list[int]:
    """Start ``counts[r]`` grpcio clients of each replica ``r``, adding each process to
    ``started`` (it prints ``ready``, and leaves when stdin closes); their PIDs."""
    pids = []
    for replica, count in zip(replicas, counts, strict=True):
        if count:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "bench.grpc_xds_clients", "--count", str(count)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap(pki, replica))}))
            pids.append(started[-1].pid)
    return pids
