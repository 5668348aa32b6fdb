"""Repeating a measurement on a shared machine: other work only ever slows a run down."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["best_of"]

T = TypeVar("T")


def best_of(run: Callable[[], T], score: Callable[[T], float], repeat: int, within: float) -> T:
    """The highest-scoring of up to ``repeat`` runs of ``run``.

    A run starts only while less than ``within`` seconds have passed since the
    first one began, so a slow method (or a busy machine) is measured once
    rather than stretching the bench.
    """
    start = time.perf_counter()
    best = run()
    for _ in range(repeat - 1):
        if time.perf_counter() - start >= within:
            break
        best = max(best, run(), key=score)
    return best
