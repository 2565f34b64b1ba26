"""Open-loop clients send on time whatever the answers; closed-loop ones wait and think."""

from __future__ import annotations

from simulator.clients import ClosedLoopClient, Load, OpenLoopClient
from simulator.engine import Simulation
from simulator.record import Record
from tests.unit.simulator.helpers import servers, sidecar


def test_open_loop_sends_on_its_schedule_however_slow_the_answers() -> None:
    sim = Simulation(1)
    record = Record()
    client = OpenLoopClient(sim, sidecar(sim, servers(sim, seconds=5.0)),
                            Load(service="backend", start=1.0, stop=2.0), record, rate=10)
    client.start()
    sim.run(10)
    assert client.sent == 10
    assert [round(t, 9) for t in record.started] == [round(1.0 + i / 10, 9) for i in range(10)]


def test_open_loop_poisson_averages_its_rate() -> None:
    sim = Simulation(1)
    client = OpenLoopClient(sim, sidecar(sim, servers(sim, seconds=0.01)),
                            Load(service="backend", stop=100.0), Record(), rate=20,
                            poisson=True)
    client.start()
    sim.run(101)
    assert 1800 < client.sent < 2200


def test_closed_loop_waits_for_each_answer_then_thinks() -> None:
    sim = Simulation(1)
    record = Record()
    client = ClosedLoopClient(sim, sidecar(sim, servers(sim, seconds=0.5)),
                              Load(service="backend", stop=10.0), record, users=2,
                              think_time=0.5)
    client.start()
    sim.run(20)
    # Each user: a call every 1 s (0.5 s answer + 0.5 s thought), from 0 to 9.
    assert len(record) == 20
    assert sorted(record.started)[::2] == [float(i) for i in range(10)]
