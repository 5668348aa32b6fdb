"""hibachi's own cost in generation: the share of each step spent outside the forward pass.

A `TimedModel` between the batcher and the adapter notes when each step
starts and ends; `forward_timed` times the transformers model's own
``forward``. The engine's busy time (from the first step's start to the last
one's end) minus the time inside ``model.forward`` is hibachi's cost: the
adapter's work (positions, masks, cache plans, sampling) and the engine's
between steps (scheduling, staging inputs, delivering tokens, waiting for the
GIL).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from hibachi import Accepted, IncrementalModel, MemoryStats

__all__ = ["StepShare", "TimedModel", "forward_timed"]


@dataclass(frozen=True)
class StepShare:
    """How the engine's busy time splits between the model and the rest."""

    steps: int
    model_seconds: float  # inside the adapter's step
    busy_seconds: float
    forward_seconds: float = 0.0  # inside the transformers model's forward

    @property
    def outside(self) -> float:
        """The share of the busy time spent outside the adapter's step."""
        return 1.0 - self.model_seconds / self.busy_seconds if self.busy_seconds else 0.0

    @property
    def outside_forward(self) -> float:
        """The share of the busy time spent outside ``model.forward`` (target: <= 0.05)."""
        return 1.0 - self.forward_seconds / self.busy_seconds if self.busy_seconds else 0.0


class TimedModel(IncrementalModel):
    """An `IncrementalModel` that times each step of the model it wraps."""

    def __init__(self, model: IncrementalModel) -> None:
        self.model = model
        self.spans: list[tuple[float, float]] = []

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return self.model.step(tokens, mask, slots, options)
        finally:
            self.spans.append((start, time.perf_counter()))

    def release(self, slot: int) -> None:
        self.model.release(slot)

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int | Accepted:
        return self.model.check_request(prompt, max_new_tokens, options)

    # The paged cache's admission, room and figures pass through, so the bench serves as
    # causal_lm_batcher does: prompts admitted with their cached prefix, rows preempted.
    def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
        return self.model.admit(slot, prompt, options, generated)

    def reserve(self, slots: np.ndarray[Any, np.dtype[np.int64]], counts: Any) -> bool:
        return self.model.reserve(slots, counts)

    def memory_stats(self) -> MemoryStats | None:
        return self.model.memory_stats()

    def share(self) -> StepShare:
        """The split over every step so far (from the first step's start to the last's end)."""
        if not self.spans:
            return StepShare(0, 0.0, 0.0)
        inside = sum(end - start for start, end in self.spans)
        return StepShare(len(self.spans), inside, self.spans[-1][1] - self.spans[0][0])


@contextmanager
def forward_timed(model: Any) -> Iterator[list[float]]:
    """Within the block, the seconds of each call of ``model.forward``, in a list."""
    spans: list[float] = []
    forward = model.forward
    own = vars(model).get("forward")  # set on the instance, not its class's

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            spans.append(time.perf_counter() - start)

    model.forward = timed_forward
    try:
        yield spans
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
