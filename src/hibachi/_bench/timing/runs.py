"""Running measurements: the best of a few runs, and a deadline against hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["HANG_SECONDS", "best_of", "run_async"]

T = TypeVar("T")

HANG_SECONDS = 300.0
"""No single run of a method takes this long; one that does is reported as failed."""


def best_of(
    run: Callable[[], T], score: Callable[[T], float], repeat: int, within: float | None
) -> T:
    """The highest-scoring of up to ``repeat`` runs of ``run``.

    A run starts only while less than ``within`` seconds have passed since the
    first one began, so a slow method (or a busy machine) is measured once
    rather than stretching the bench; ``within=None``: all ``repeat`` runs.
    """
    start = time.perf_counter()
    best = run()
    for _ in range(repeat - 1):
        if within is not None and time.perf_counter() - start >= within:
            break
        best = max(best, run(), key=score)
    return best


def run_async(coroutine: Coroutine[Any, Any, T], seconds: float = HANG_SECONDS) -> T:
    """``asyncio.run(coroutine)``, failing with TimeoutError after ``seconds``."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coroutine, seconds)
        except TimeoutError:
            raise TimeoutError(f"did not finish within {seconds:.0f} s") from None

    return asyncio.run(bounded())
