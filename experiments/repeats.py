"""Seeded repeats: an experiment's headline as the median of short runs, with its spread.

One run on a shared machine can be unlucky: a busy second of some other process lands on one
arm of a comparison (one balancer, one retry policy) and not on the other, and the run says
the opposite of what holds — peak EWMA's p99 above round robin's, say. So an experiment runs
its arms in a few short *repeats*, interleaved: repeat 1 runs every arm, then repeat 2 does,
and so on; each repeat has its own seed, which drives the run's randomness (a sidecar's
balancer, a backend's errors, the users a load generator picks) and also shuffles the order
of the arms in that repeat, so a busy spell falls on different arms in different repeats
rather than on the whole of one arm's measurement.

A comparison is made within a repeat (two arms measured seconds apart, under the same load of
the machine) and reported over the repeats as its median, lowest and highest — "0.17
(0.12–0.31)" — with every repeat's value in the JSON. A test asserts on the median, with a
margin chosen from the spread measured on a busy machine, and shows every repeat when it fails.

Glossary:
    arm        one of the things an experiment compares: a balancer, a policy, a mode
    repeat     one pass over every arm, in an order and with randomness of its own seed
    spread     one number over the repeats: median, min and max (:class:`Spread`)
    headline   a claim of the experiment and the number, per repeat, that shows it
               (:class:`Headline`): usually a ratio of two arms measured in the same repeat
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from experiments.harness import markdown_table

T = TypeVar("T")
FIRST_SEED = 1  # repeat i (from 0) has seed FIRST_SEED + i


def seeds(repeats: int) -> list[int]:
    """The seed of each repeat."""
    return [FIRST_SEED + i for i in range(repeats)]


def shuffled(arms: Iterable[T], seed: int) -> list[T]:
    """The arms in the order one repeat runs them (a permutation drawn from its seed)."""
    order = list(arms)
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True, slots=True)
class Spread:
    """One number over the repeats: every value, in repeat order, and its median, min and max.

    A NaN (nothing to measure in that repeat) is kept in ``values`` and left out of the rest.
    """

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        return cls(tuple(float(v) for v in values))

    @property
    def _measured(self) -> list[float]:
        return [v for v in self.values if not math.isnan(v)]

    @property
    def median(self) -> float:
        measured = self._measured
        return statistics.median(measured) if measured else math.nan

    @property
    def low(self) -> float:
        return min(self._measured, default=math.nan)

    @property
    def high(self) -> float:
        return max(self._measured, default=math.nan)

    def cell(self, fmt: Callable[[float], str]) -> str:
        """``median (min–max)`` for a table cell, each value written by ``fmt``; only the
        median when min and max would read the same."""
        median, low, high = fmt(self.median), fmt(self.low), fmt(self.high)
        return median if low == high else f"{median} ({low}–{high})"

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high,
                "repeats": list(self.values)}


def across(by_repeat: Sequence[dict[str, dict[str, Any]]], arm: str, key: str) -> Spread:
    """The spread of ``result[key]`` of one arm over the repeats (``by_repeat[i][arm]``)."""
    return Spread.of(r[arm][key] for r in by_repeat)


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is zero or either is NaN (nothing to compare)."""
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


@dataclass(frozen=True, slots=True)
class Headline:
    """A claim of the experiment, and its number in each repeat."""

    key: str  # its name in the JSON (``headlines``), for tests
    label: str  # what the number is, for a reader: "peak EWMA p99 ÷ round robin p99"
    spread: Spread
    claim: str  # what it shows when it holds: "below 1: peak EWMA's tail is shorter"
    fmt: Callable[[float], str] = field(default=lambda v: f"{v:.2f}")


def headlines_table(headlines: Sequence[Headline]) -> str:
    """The headlines as a Markdown table: median, min–max, every repeat, the claim."""
    rows = [[h.label, h.fmt(h.spread.median), f"{h.fmt(h.spread.low)}–{h.fmt(h.spread.high)}",
             ", ".join(h.fmt(v) for v in h.spread.values), h.claim] for h in headlines]
    return markdown_table(["headline", "median", "min–max", "each repeat", "what it shows"],
                          rows)


def headlines_json(headlines: Sequence[Headline]) -> dict[str, dict[str, Any]]:
    return {h.key: {"label": h.label, **h.spread.as_json()} for h in headlines}
