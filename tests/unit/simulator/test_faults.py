"""A fault changes what replicas do for a while, then gives back what each had before: a swept
value, or another fault's, not the defaults."""

from __future__ import annotations

from pathlib import Path

from simulator import scenario

BACKEND = """
drain: 1
clients:
  - {service: backend, rate: 100, timeout: 1}
policies:
  no retries: "clusters: [{name: backend, retry_policy: {num_retries: 0}}]"
"""


def run(tmp_path: Path, text: str) -> scenario.Outcome:
    """The one run of a scenario whose client calls ``backend`` 100 times a second."""
    path = tmp_path / "scenario.yaml"
    path.write_text(BACKEND + text)
    (outcome,) = scenario.run(scenario.load(str(path)))
    return outcome


def test_a_fault_ending_gives_back_the_swept_value(tmp_path: Path) -> None:
    outcome = run(tmp_path, """
duration: 6
services:
  backend: {replicas: 2, service_time: {fixed: 0.01}}
sweep: {set: error_rate, values: [0.5]}
faults:
  - {at: 2, until: 4, service: backend, set: {error_rate: 0.0}}
""")
    record = outcome.record
    # (a call's answer is decided when its service ends: one sent just before 4 s ends after)
    assert record.success(2, 3.9) == 1.0  # the fault took the errors away ...
    assert 0.35 < record.success(0, 2) < 0.65  # ... from a sweep of one failure in two
    assert 0.35 < record.success(4, 6) < 0.65  # ... which is back once it ended
    assert all(server.behaviour.error_rate == 0.5 for server in outcome.servers)


def test_overlapping_faults_each_give_back_what_the_other_left(tmp_path: Path) -> None:
    record = run(tmp_path, """
duration: 8
services:
  backend: {replicas: 1, service_time: {fixed: 0.01}}
faults:
  - {at: 1, until: 5, service: backend, set: {pinned: 0.05}}
  - {at: 3, until: 4, service: backend, set: {pinned: 0.2}}
""").record

    def latency_at(second: float) -> float:  # of the call sent then
        index = next(i for i, t in enumerate(record.started) if t >= second)
        return record.latencies[index]

    assert latency_at(0.5) < 0.02  # none
    assert 0.05 <= latency_at(2) < 0.06  # the first
    assert 0.2 <= latency_at(3.5) < 0.21  # the second, over the first
    assert 0.05 <= latency_at(4.5) < 0.06  # the first again, once the second ended
    assert latency_at(6) < 0.02  # none again, once both ended
