"""`Health`: whether a batcher can serve, and whether its engine is stuck in the model."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Health"]


@dataclass(frozen=True)
class Health:
    """A snapshot of a batcher's health, from `batcher.health()`.

    ``state`` is the batcher's lifecycle: ``"unopened"``, ``"open"``,
    ``"closing"`` or ``"closed"``. ``engine_alive`` says whether its engine
    thread is running; ``failure`` says why it ended, if it failed.
    ``in_model_for`` is how long (seconds) the model call now running has
    run, or None between calls: a large value means a stuck model.
    ``queue_depth`` counts requests waiting for the engine.
    """

    state: str
    engine_alive: bool
    in_model_for: float | None
    failure: str | None
    queue_depth: int

    def ok(self, stuck_after: float = math.inf) -> bool:
        """True when the batcher is open, its engine alive, and no model call has
        run longer than ``stuck_after`` seconds."""
        stuck = self.in_model_for is not None and self.in_model_for > stuck_after
        return self.state == "open" and self.engine_alive and self.failure is None and not stuck
