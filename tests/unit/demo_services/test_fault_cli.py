"""`meshctl fault` turns flags into admin calls; bad flags are named before anything is sent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from meshctl import fault


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fault.register(parser.add_subparsers())
    return parser.parse_args(["fault", *argv])


def test_durations_with_and_without_units() -> None:
    assert fault.duration("50ms", "ms") == pytest.approx(0.05)
    assert fault.duration("1.5s", "ms") == 1.5
    assert fault.duration("20", "ms") == pytest.approx(0.02)
    assert fault.duration("12", "s") == 12.0
    with pytest.raises(ValueError, match="duration 'soon'"):
        fault.duration("soon", "s")


@pytest.mark.parametrize(("argv", "expected"), [
    ((), ("GET", "/faults", None)),
    (("--latency", "20ms", "--distribution", "lognormal", "--sigma", "1.2"),
     ("POST", "/faults", {"latency_ms": 20.0, "distribution": "lognormal", "sigma": 1.2})),
    (("--error-rate", "0.3"), ("POST", "/faults", {"error_rate": 0.3})),
    (("--brownout", "10", "--latency", "100ms", "--error-rate", "0.5"),
     ("POST", "/brownout", {"seconds": 10.0, "latency_ms": 100.0, "error_rate": 0.5})),
    (("--crash", "--exit-code", "3"), ("POST", "/crash", {"exit_code": 3})),
    (("--clear",), ("DELETE", "/faults", None)),
])
def test_flags_become_one_admin_call(argv: tuple[str, ...], expected: tuple[object, ...]) -> None:
    assert fault.request(parse("payments", *argv)) == expected


def test_replicas_come_from_the_demo_state(tmp_path: Path) -> None:
    instances: list[dict[str, str | None]] = [
        {"name": f"payments-{i}", "service": "payments", "app_admin": f"127.0.10.4{i}:8081"}
        for i in (1, 2, 3)]
    instances.append({"name": "loadgen", "service": "loadgen", "app_admin": None})
    (tmp_path / "state.json").write_text(json.dumps({"instances": instances}))
    state = ("--state-dir", str(tmp_path))
    assert list(fault.targets(parse("payments", *state))) == ["payments-1", "payments-2",
                                                             "payments-3"]
    assert fault.targets(parse("payments", "--replica", "2", *state)) == {
        "payments-2": "127.0.10.42:8081"}
    assert fault.targets(parse("payments", "--replica", "payments-3", *state)) == {
        "payments-3": "127.0.10.43:8081"}
    with pytest.raises(ValueError, match="no replica '7'"):
        fault.targets(parse("payments", "--replica", "7", *state))
    with pytest.raises(ValueError, match="no service 'loadgen' with fault knobs"):
        fault.targets(parse("loadgen", *state))
    with pytest.raises(ValueError, match="no demo mesh is running here"):
        fault.targets(parse("payments", "--state-dir", str(tmp_path / "none")))
    assert fault.targets(parse("payments", "--admin", "10.0.0.5:8081")) == {
        "payments@10.0.0.5:8081": "10.0.0.5:8081"}
