"""transformers' own ways to serve the generation workload's requests.

- ``generate()`` one request at a time, in arrival order;
- static batching: ``generate()`` on left-padded groups of requests in
  arrival order, each group running until its longest member ends;
- the limit: ``generate()`` on one left-padded batch of every request at once,
  as if they all arrived together and no batch had to wait for a free row;
- transformers' continuous batching (the manager behind ``generate_batch``).

Each returns an `Outcome`: the tokens each client got, when its first and its
last token came (from the moment every client has arrived), and the wall time.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..models.requests import LlmRequest
from .outcome import Outcome, trim

__all__ = ["Missing", "continuous_batching", "one_at_a_time", "one_batch", "static_batches"]


def one_at_a_time(model: Any, requests: list[LlmRequest], device: str) -> Outcome:
    """``generate()`` on each request alone, in arrival order."""
    return _generate_groups(model, [[r] for r in requests], device)


def static_batches(model: Any, requests: list[LlmRequest], group: int, device: str) -> Outcome:
    """``generate()`` on left-padded groups of ``group`` requests, in arrival order."""
    groups = [requests[i : i + group] for i in range(0, len(requests), group)]
    return _generate_groups(model, groups, device)


def one_batch(model: Any, requests: list[LlmRequest], device: str) -> Outcome:
    """The limit: ``generate()`` on one left-padded batch of every request at once."""
    return _generate_groups(model, [requests], device)


def _generate_groups(model: Any, groups: list[list[LlmRequest]], device: str) -> Outcome:
    eos = model.generation_config.eos_token_id
    tokens: list[list[int]] = []
    first: list[float] = []
    last: list[float] = []
    start = time.perf_counter()
    for group in groups:
        ids, mask = _left_padded([r.prompt for r in group], device)
        steps = _StepTimes()
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max(r.budget for r in group),
            streamer=steps,
        )
        new = out[:, ids.shape[1] :].tolist()
        got = [trim(row, r.budget, eos) for row, r in zip(new, group, strict=True)]
        tokens += got
        first += [steps.at[0] - start] * len(group)
        last += [steps.at[len(row) - 1] - start for row in got]
    return Outcome(tokens, first, time.perf_counter() - start, last)


def _left_padded(prompts: list[list[int]], device: str) -> tuple[Any, Any]:
    import torch

    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


class _StepTimes:
    """A ``generate()`` streamer that notes when each step's new tokens come out: a row's
    n-th token came at ``at[n - 1]``, as a client streaming it would have seen it."""

    def __init__(self) -> None:
        self.prompt_seen = False  # the first call carries the prompt
        self.at: list[float] = []

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.at.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def continuous_batching(model: Any, requests: list[LlmRequest], batch_size: int) -> Outcome:
    """transformers' continuous batching, every request added at once, own budget each.

    This is the manager ``generate_batch`` runs, used directly so that each
    request keeps its own ``max_new_tokens``. Its cache is sized for the
    workload: left to guess on a CPU it allocates for seconds.
    """
    if not hasattr(model, "continuous_batching_context_manager"):
        raise Missing("needs transformers >= 4.56: pip install 'hibachi-batch[bench]'")
    with model.continuous_batching_context_manager(
        generation_config=model.generation_config,
        continuous_batching_config=_cb_config(requests, batch_size),
        block=True,
        timeout=10,
        warmup=False,
    ) as manager:
        start = time.perf_counter()
        ids = [
            manager.add_request(r.prompt, max_new_tokens=r.budget, record_timestamps=True)
            for r in requests
        ]
        results = _collect(manager, len(ids))
        seconds = time.perf_counter() - start
    ordered = [results[i] for i in ids]
    eos = model.generation_config.eos_token_id
    pairs = zip(ordered, requests, strict=True)
    tokens = [trim(list(r.generated_tokens), q.budget, eos) for r, q in pairs]
    stamps = [r.timestamps or [math.nan] * len(t) for r, t in zip(ordered, tokens, strict=True)]
    first = [times[0] - start for times in stamps]
    last = [times[len(t) - 1] - start for times, t in zip(stamps, tokens, strict=True)]
    return Outcome(tokens, first, seconds, last)


class Missing(RuntimeError):
    """A method that cannot run with what is installed."""


def _cb_config(requests: list[LlmRequest], batch_size: int) -> Any:
    from transformers import ContinuousBatchingConfig

    page = 64
    blocks = sum(-(-(len(r.prompt) + r.budget) // page) for r in requests)
    return ContinuousBatchingConfig(
        page_size=page,
        num_blocks=blocks + batch_size,
        max_batch_tokens=max(512, max(len(r.prompt) for r in requests)),
        max_requests_per_batch=batch_size,
    )


def _collect(manager: Any, count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    while len(results) < count:
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("transformers' generation thread stopped")
            continue
        if result.error:
            raise RuntimeError(f"transformers' continuous batching failed: {result.error}")
        if result.is_finished():
            results[result.request_id] = result
    return results
