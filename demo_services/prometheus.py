"""A Prometheus server for the demo: its scrape configuration, and how to ask it about targets.

Prometheus pulls: every ``scrape_interval`` it GETs each target's ``/metrics`` and stores the
samples, labelled with the target's ``instance``. The demo scrapes every sidecar's admin
endpoint (``job="sidecar"``, one ``mesh_instance`` label per replica, so a graph can split
``payments-1`` from ``payments-2``), the control plane's operator API (``job="controlplane"``,
every replica's) and, when the control plane keeps its state in etcd, each etcd member's
``/metrics`` (``job="etcd"``: ``etcd_server_has_leader``,
``etcd_server_leader_changes_seen_total``).
``/api/v1/targets`` then says, per target, whether the last scrape worked (``health: up``).

The local mesh runs Debian's ``prometheus`` binary when it is installed; the configuration is
the same in the compose file.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import yaml

SCRAPE_INTERVAL = "1s"  # short: the dashboard's golden metrics are at most this much older


def config(sidecars: dict[str, str], controlplanes: list[str], etcd: list[str]) -> str:
    """The YAML configuration scraping ``sidecars`` (instance name → admin address), the
    control-plane replicas' operator APIs and the etcd members' client addresses (if any)."""
    jobs: list[dict[str, Any]] = [
        {"job_name": "sidecar",
         "static_configs": [{"targets": [address], "labels": {"mesh_instance": name}}
                            for name, address in sidecars.items()]},
        {"job_name": "controlplane", "static_configs": [{"targets": controlplanes}]},
    ]
    if etcd:
        jobs.append({"job_name": "etcd", "static_configs": [{"targets": etcd}]})
    document: dict[str, Any] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs,
    }
    return "# Made by the demo: every sidecar and the control plane.\n" + \
        yaml.safe_dump(document, sort_keys=False)


def argv(binary: str, config_file: str, data_dir: str, listen: str) -> list[str]:
    """The command line of a throwaway Prometheus server (its data goes with the demo)."""
    return [binary, f"--config.file={config_file}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={listen}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn"]


def targets(address: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The active targets of the Prometheus server at ``address`` (``/api/v1/targets``).

    Raises:
        OSError: the server cannot be reached.
        ValueError: it answered something other than a targets listing.
    """
    with urllib.request.urlopen(f"http://{address}/api/v1/targets?state=active",
                                timeout=timeout) as response:
        data = json.loads(response.read())
    if data.get("status") != "success":
        raise ValueError(f"prometheus at {address}: /api/v1/targets said {data}")
    active: list[dict[str, Any]] = data["data"]["activeTargets"]
    return active
