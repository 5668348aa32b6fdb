"""hibachi's own cost in generation: the share of each step spent outside the model.

`kv_cache_run` serves the generation workload through the transformers
adapter with a `TimedModel` between the batcher and the model: it notes when
each model step starts and ends, so the time the engine spends between steps
(scheduling, staging inputs, delivering tokens, waiting for the GIL) is the
busy time minus the time inside the model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from hibachi import AutoregressiveBatcher, IncrementalModel

from .llm import LlmRequest
from .serving import Outcome, serve_with_hibachi

__all__ = ["StepShare", "TimedModel", "kv_cache_run"]


@dataclass(frozen=True)
class StepShare:
    """How the engine's busy time splits between the model and the rest."""

    steps: int
    model_seconds: float
    busy_seconds: float

    @property
    def outside(self) -> float:
        """The share of the busy time spent outside the model (target: <= 0.10)."""
        return 1.0 - self.model_seconds / self.busy_seconds if self.busy_seconds else 0.0


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

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> int:
        return self.model.check_request(prompt, max_new_tokens, options)

    def share(self) -> StepShare:
        """The split over every step so far (from the first step's start to the last's end)."""
        if not self.spans:
            return StepShare(0, 0.0, 0.0)
        inside = sum(end - start for start, end in self.spans)
        return StepShare(len(self.spans), inside, self.spans[-1][1] - self.spans[0][0])


def kv_cache_run(
    model: Any,
    requests: list[LlmRequest],
    *,
    batch_size: int,
    eos: int,
    prefill_chunk: int = 512,
) -> tuple[Outcome, StepShare]:
    """Every request streamed at once through the KV-cache adapter, timed step by step."""
    import torch

    from hibachi.integrations.transformers import CausalLMAdapter

    max_length = max(len(r.prompt) + r.budget for r in requests)
    timed = TimedModel(CausalLMAdapter(model, slots=batch_size, max_length=max_length))
    batcher = AutoregressiveBatcher(
        timed,
        stop_token=torch.tensor(eos),
        padding_token=torch.tensor(eos),
        max_batch_size=batch_size,
        prefill_chunk=prefill_chunk,
    )
    outcome = asyncio.run(serve_with_hibachi(batcher, requests, "cpu"))
    return outcome, timed.share()
