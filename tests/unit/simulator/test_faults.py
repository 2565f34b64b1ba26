"""A fault changes what replicas do for a while, then gives back what each had before: a swept
value, or another fault's, not the defaults."""

from __future__ import annotations

from pathlib import Path

from simulator import scenario

SWEPT = """
duration: 6
drain: 1
services:
  backend: {replicas: 2, service_time: {fixed: 0.01}}
clients:
  - {service: backend, rate: 100, timeout: 1}
sweep: {set: error_rate, values: [0.5]}
faults:
  - {at: 2, until: 4, service: backend, set: {error_rate: 0.0}}
windows: {before: [0, 2], fault: [2, 4], after: [4, 6]}
policies:
  no retries: "clusters: [{name: backend, retry_policy: {num_retries: 0}}]"
"""


def test_a_fault_ending_gives_back_the_swept_value(tmp_path: Path) -> None:
    path = tmp_path / "swept.yaml"
    path.write_text(SWEPT)
    (outcome,) = scenario.run(scenario.load(str(path)))
    record = outcome.record
    # (a call's answer is decided when its service ends: one sent just before 4 s ends after)
    assert record.success(2, 3.9) == 1.0  # the fault took the errors away ...
    assert 0.35 < record.success(0, 2) < 0.65  # ... from a sweep of one failure in two
    assert 0.35 < record.success(4, 6) < 0.65  # ... which is back once it ended
    assert all(server.behaviour.error_rate == 0.5 for server in outcome.servers)
