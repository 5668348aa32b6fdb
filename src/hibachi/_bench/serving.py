"""Serving the generation workload's requests through a hibachi batcher, timed per client.

`generation` (every way to serve) and `step_share` (hibachi timed step by step)
both build on this module; neither imports the other's callers.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from .llm import LlmRequest

__all__ = ["Outcome", "serve_with_hibachi"]


@dataclass
class Outcome:
    """The tokens each request received, when its first token came, the wall time."""

    tokens: list[list[int]]
    first_token: list[float]
    seconds: float
    outside_model: float | None = None  # hibachi's share of each step spent outside the model

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.tokens)) / self.seconds


async def serve_with_hibachi(batcher: Any, requests: list[LlmRequest], device: str) -> Outcome:
    """Every request streamed at once through ``batcher`` (unopened; this opens and closes it)."""
    async with batcher:
        start = time.perf_counter()
        results = await asyncio.gather(*(_client(batcher, r, start, device) for r in requests))
        seconds = time.perf_counter() - start
    return Outcome([t for t, _ in results], [f for _, f in results], seconds)


async def _client(
    batcher: Any, request: LlmRequest, start: float, device: str
) -> tuple[list[int], float]:
    import torch

    tokens: list[int] = []
    first = math.nan
    prompt = torch.tensor(request.prompt, device=device)
    async for token in batcher.run(prompt, max_new_tokens=request.budget):
        if not tokens:
            first = time.perf_counter() - start
        tokens.append(int(token))
    return tokens, first
