"""The shipped scenarios in short form: each one's headline, the same numbers for the same seed,
and a policy the control plane refuses refused by ``meshctl simulate`` in its words.

Short form: a fifth of the scenario's time (``--quick``), and for the sweeps only the ends of
the sweep. *metastable* runs whole — its service time, timeout and spike are fixed seconds, so
a fifth of them is a 1.6 s spike that every policy survives; whole, it takes about 2 s.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.policy import merge
from simulator import report, scenario
from simulator.report import summary

ROOT = Path(__file__).resolve().parents[3]
QUICK = 0.2  # meshctl simulate --quick


Runs = dict[tuple[Any, str], dict[str, Any]]  # each run's figures by (sweep value, policy)


def runs(name: str, *, scale: float = QUICK, sweep_ends: bool = False) -> Runs:
    """Each run's figures in the scenario's short form."""
    chosen = scenario.load(name)
    if scale != 1:
        chosen = chosen.scaled(scale)
    if sweep_ends and chosen.sweep is not None:
        setting, values = chosen.sweep
        chosen = dataclasses.replace(chosen, sweep=(setting, (values[0], values[-1])))
    return {(o.sweep_value, o.policy): summary(o, chosen) for o in scenario.run(chosen)}


@pytest.fixture(scope="module")
def one_client() -> Runs:
    return runs("retry-sweep", sweep_ends=True)


@pytest.fixture(scope="module")
def small_clients() -> Runs:
    return runs("retry-sweep-small-clients", sweep_ends=True)


def test_the_scenarios_are_shipped() -> None:
    assert {"beyond-round-robin", "metastable", "retry-sweep",
            "retry-sweep-small-clients"} <= set(scenario.names())


def test_peak_ewma_beats_least_request_beats_round_robin() -> None:
    success = {policy: run["success"] for (_, policy), run in runs("beyond-round-robin").items()}
    assert success["peak EWMA"] > success["least request"] > success["round robin"], success
    assert 0.93 < success["round robin"] < 0.97, success  # Linkerd: about 95 %


def test_retries_multiply_the_load_and_a_budget_caps_it(one_client: Runs) -> None:
    assert {run["load_per_call"] for (rate, _), run in one_client.items() if rate == 0} == {1.0}
    outage = {policy: run for (rate, policy), run in one_client.items() if rate == 1.0}
    load = {policy: run["load_per_call"] for policy, run in outage.items()}
    assert load["no retries"] == 1.0, load
    assert abs(load["3 retries"] - 4.0) < 0.01, load  # 1 + N
    assert 1.1 < load["3 retries + budget"] < 1.3, load  # 20 % and 10 a second of 1,000
    assert 1.0 < load["3 retries + breaker"] < 1.15, load  # about 10 %
    assert all(run["success"] == 0.0 for run in outage.values()), outage


def test_many_small_clients_weaken_per_client_limits(one_client: Runs,
                                                    small_clients: Runs) -> None:
    for policy in ("3 retries + budget", "3 retries + breaker"):
        one, hundred = (shape[1.0, policy]["load_per_call"] for shape in (one_client,
                                                                           small_clients))
        assert hundred > one + 0.5, (policy, one, hundred)
    # a sidecar with less than one call in flight never fills max_retries: 3 retries
    assert small_clients[1.0, "3 retries + breaker"]["load_per_call"] > 3.9


def test_naive_retries_turn_a_spike_into_a_collapse() -> None:
    after = {policy: run["windows"]["long after"]
             for (_, policy), run in runs("metastable", scale=1).items()}
    assert after["no retries"] == 1.0, after
    assert after["3 retries + budget"] == 1.0, after
    assert after["3 retries"] == 0.0, after
    assert after["3 retries + backoff"] == 0.0, after


def test_the_same_seed_gives_the_same_numbers(tmp_path: Path) -> None:
    chosen = scenario.load("beyond-round-robin").scaled(0.05)
    texts = []
    for attempt in ("first", "second"):  # the files meshctl simulate writes
        report.report(chosen, scenario.run(chosen)).write(tmp_path / attempt)
        texts.append((tmp_path / attempt / f"{chosen.name}.json").read_bytes())
    assert texts[0] == texts[1]
    other = report.report(scenario.with_seed(chosen, 2), scenario.run(
        scenario.with_seed(chosen, 2))).data["runs"][0]["latency_s"]
    assert other != json.loads(texts[0])["runs"][0]["latency_s"]  # the seed decides


def test_a_refused_policy_is_refused_in_the_control_planes_words(tmp_path: Path) -> None:
    policy = tmp_path / "mine.yaml"
    policy.write_text("clusters:\n- name: backend\n"
                      "  retry_policy: {retry_on: [sometimes], num_retries: 3}\n")
    result = subprocess.run([sys.executable, "-m", "meshctl", "simulate", "retry-sweep",
                             "--policy", str(policy), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    _, problems = merge([(str(policy), policy.read_text())])
    assert problems
    for problem in problems:  # every one, as the control plane words it
        assert str(problem) in result.stderr, result.stderr
    assert f"{policy}: clusters[0].retry_policy.retry_on[0]" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
