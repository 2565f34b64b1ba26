"""The event loop: time order, same-time FIFO, cancel, run until, every."""

from __future__ import annotations

from simulator.engine import Simulation


def test_events_run_in_time_order_and_the_clock_follows() -> None:
    sim = Simulation(1)
    seen: list[tuple[str, float]] = []
    for name, time in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
        sim.at(time, lambda n=name: seen.append((n, sim.now())))
    sim.run(10)
    assert seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert sim.now() == 10 and sim.events == 3


def test_events_at_the_same_time_run_in_the_order_scheduled() -> None:
    sim = Simulation(1)
    seen: list[int] = []
    for n in range(50):
        sim.at(1.0, seen.append, n)
    sim.run(1.0)
    assert seen == list(range(50))


def test_a_cancelled_event_does_not_run_and_is_not_counted() -> None:
    sim = Simulation(1)
    seen: list[str] = []
    sim.at(1.0, seen.append, "kept")
    sim.after(1.0, seen.append, "cancelled").cancel()
    sim.run(2)
    assert seen == ["kept"] and sim.events == 1


def test_run_stops_at_until_and_goes_on_from_there() -> None:
    sim = Simulation(1)
    seen: list[float] = []
    sim.at(1.0, lambda: seen.append(sim.now()))
    sim.at(5.0, lambda: seen.append(sim.now()))
    sim.run(3)
    assert seen == [1.0] and sim.now() == 3
    sim.run(6)
    assert seen == [1.0, 5.0]


def test_the_past_means_now_and_every_repeats_until() -> None:
    sim = Simulation(1)
    sim.run(2)
    times: list[float] = []
    sim.at(0.5, lambda: times.append(sim.now()))
    sim.after(-1, lambda: times.append(sim.now()))
    sim.run(2)
    assert times == [2.0, 2.0]
    ticks: list[float] = []
    sim.every(1.0, lambda: ticks.append(sim.now()), until=5)
    sim.run(10)
    assert ticks == [3.0, 4.0, 5.0]


def test_the_same_seed_draws_the_same_numbers() -> None:
    assert Simulation(7).rng.random() == Simulation(7).rng.random()
