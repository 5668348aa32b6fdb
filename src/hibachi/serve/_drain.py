"""`DrainRate`: how fast a batcher finishes requests, and so when to come back."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["DrainRate"]


class DrainRate:
    """Finished requests counted over the last ``window`` seconds.

    `retry_after` answers a refused client: the seconds the queue ahead of it
    takes to drain at the current rate, at least 1 and at most ``ceiling``.
    """

    def __init__(
        self,
        window: float = 10.0,
        *,
        ceiling: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.ceiling = ceiling
        self._clock = clock
        self._ends: deque[float] = deque(maxlen=100_000)

    def note_finished(self) -> None:
        self._ends.append(self._clock())

    def per_second(self) -> float:
        """Requests finished per second over the window (0.0 when none)."""
        now = self._clock()
        while self._ends and self._ends[0] < now - self.window:
            self._ends.popleft()
        return len(self._ends) / self.window

    def retry_after(self, waiting: int) -> int:
        """Whole seconds until ``waiting`` queued requests (and this one) have drained."""
        rate = self.per_second()
        if rate <= 0.0:
            # Nothing finished within the window: it takes at least that long.
            return min(self.ceiling, math.ceil(self.window)) if waiting else 1
        return max(1, min(self.ceiling, math.ceil((waiting + 1) / rate)))
