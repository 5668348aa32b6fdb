"""The generation workloads' requests: one client's prompt and budget, drawn at random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LlmRequest", "make_requests"]


@dataclass(frozen=True)
class LlmRequest:
    """One client's prompt (token ids) and budget of new tokens."""

    prompt: list[int]
    budget: int


def make_requests(
    count: int, lengths: tuple[int, int], budgets: tuple[int, int], vocab: int, seed: int
) -> list[LlmRequest]:
    """``count`` requests with lengths and budgets drawn uniformly from the given ranges."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        prompt = rng.integers(2, vocab - 1, size=length).tolist()
        requests.append(LlmRequest(prompt, int(rng.integers(budgets[0], budgets[1] + 1))))
    return requests
