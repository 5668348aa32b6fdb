"""Methods measured side by side in alternating rounds, compared by the median of per-round ratios.

A best-of figure per method compares each method's luckiest moment; on a
shared or small machine those moments differ from one method to the next. A
ratio taken within a round compares the methods under the same conditions,
and the median of those ratios over several rounds, with its spread, says how
far one run can be trusted.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RatioSummary", "alternate", "ratio_summary", "rotated"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class RatioSummary:
    """The median of per-round ratios, the lowest and highest, and how many rounds."""

    median: float
    low: float
    high: float
    rounds: int

    def __str__(self) -> str:
        if self.rounds == 1:
            return f"{self.median:.2f}x"
        return f"{self.median:.2f}x [{self.low:.2f}-{self.high:.2f}]"


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> RatioSummary:
    """``numerators[i] / denominators[i]`` of each round: their median, lowest and highest."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("one numerator and one denominator per round, at least one round")
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return RatioSummary(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def alternate(methods: Mapping[K, Callable[[], T]], rounds: int) -> dict[K, list[T]]:
    """Each method's figure (or result) in each of ``rounds`` rounds.

    Every round runs every method once; the order turns by one each round, so
    no method always runs first (after a pause) or last (after the others).
    """
    names = list(methods)
    figures: dict[K, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            figures[name].append(methods[name]())
    return figures


def rotated(names: Sequence[K], by: int) -> list[K]:
    """``names`` turned left by ``by`` places."""
    if not names:
        return []
    shift = by % len(names)
    return [*names[shift:], *names[:shift]]
