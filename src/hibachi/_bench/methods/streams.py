"""hibachi's way to serve the generation workload's requests: every client streams at once.

`with_hibachi` serves them through the transformers adapter (a KV cache per
slot), timed step by step (`kv_cache_run`), or, where
`hibachi.integrations.transformers` cannot be imported, through the
stateless `AutoregressiveBatcher` over `FullForward`, which re-reads every
sequence in full at each step.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from typing import Any

from hibachi import AutoregressiveBatcher, AutoregressiveStats

from ..models.llama import PAD
from ..models.requests import LlmRequest
from ..timing.runs import run_async
from ..timing.steps import StepShare, TimedModel, forward_timed
from .outcome import Outcome

__all__ = [
    "FullForward",
    "hibachi_label",
    "kv_cache_run",
    "serve_with_hibachi",
    "stateless_batcher",
    "uses_fallback",
    "with_hibachi",
    "with_memory",
]


def with_hibachi(
    model: Any,
    requests: list[LlmRequest],
    batch_size: int,
    device: str,
    *,
    prefix_caching: bool = True,
) -> Outcome:
    """Every request streamed at once through a new hibachi batcher over ``model``.

    With `hibachi.integrations.transformers` installed, this is the KV-cache
    adapter that ``causal_lm_batcher`` builds, timed step by step
    (`kv_cache_run`), its prefix caching on or off; otherwise the stateless
    fallback.
    """
    eos = model.generation_config.eos_token_id
    if uses_fallback():
        batcher = stateless_batcher(model, batch_size=batch_size, eos=eos, device=device)
        return run_async(serve_with_hibachi(batcher, requests, device))
    outcome, share = kv_cache_run(
        model, requests, batch_size=batch_size, eos=eos, prefix_caching=prefix_caching
    )
    outcome.outside_model, outcome.outside_step = share.outside_forward, share.outside
    return outcome


def kv_cache_run(
    model: Any,
    requests: list[LlmRequest],
    *,
    batch_size: int,
    eos: int,
    prefill_chunk: int = 512,
    prefix_caching: bool = True,
) -> tuple[Outcome, StepShare]:
    """Every request streamed at once through the KV-cache adapter, timed step by step."""
    import torch

    from hibachi.integrations.transformers import CausalLMAdapter

    max_length = max(len(r.prompt) + r.budget for r in requests)
    adapter = CausalLMAdapter(
        model, slots=batch_size, max_length=max_length, prefix_caching=prefix_caching
    )
    timed = TimedModel(adapter)
    batcher = AutoregressiveBatcher(
        timed,
        stop_token=torch.tensor(eos),
        pad_value=torch.tensor(eos),
        max_batch_size=batch_size,
        max_batch_tokens=prefill_chunk,
    )
    with forward_timed(model) as forward:
        outcome = asyncio.run(serve_with_hibachi(batcher, requests, "cpu"))
    share = timed.share()
    return outcome, StepShare(share.steps, share.model_seconds, share.busy_seconds, sum(forward))


async def serve_with_hibachi(batcher: Any, requests: list[LlmRequest], device: str) -> Outcome:
    """Every request streamed at once through ``batcher`` (unopened; this opens and closes it)."""
    async with batcher:
        start = time.perf_counter()
        results = await asyncio.gather(*(_client(batcher, r, start, device) for r in requests))
        seconds = time.perf_counter() - start
    tokens, first, last = (list(column) for column in zip(*results, strict=True))
    return with_memory(Outcome(tokens, first, seconds, last), batcher.stats())


def with_memory(outcome: Outcome, stats: AutoregressiveStats) -> Outcome:
    """``outcome`` with what the batcher's ``stats`` say of its rows and memory: the most
    rows at once and, where its model pages its keys and values, the most bytes of blocks
    held at once (rows' and cached prefixes') and the prefix cache's hit rate."""
    outcome.rows_at_once = stats.peak_requests_in_flight
    memory = stats.memory
    if memory is not None:
        outcome.peak_kv_bytes = memory.peak_blocks * memory.bytes_per_block
        outcome.prefix_hit_rate = memory.prefix_cache_hit_rate
    return outcome


async def _client(
    batcher: Any, request: LlmRequest, start: float, device: str
) -> tuple[list[int], float, float]:
    import torch

    tokens: list[int] = []
    first = last = math.nan
    prompt = torch.tensor(request.prompt, device=device)
    async for token in batcher.run(prompt, max_new_tokens=request.budget):
        last = time.perf_counter() - start
        if not tokens:
            first = last
        tokens.append(int(token))
    return tokens, first, last


class FullForward:
    """hibachi's stateless model contract over a transformers causal LM.

    Every step runs the whole left-padded batch and returns the argmax of the
    last position. Positions are counted from each row's first real token, so
    a padded row gets exactly what it gets alone.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, tokens: Any, mask: Any) -> Any:
        import torch

        with torch.inference_mode():
            attention = mask.long()
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=tokens, attention_mask=attention, position_ids=positions, use_cache=False
            )
            return out.logits[:, -1].argmax(-1)


def stateless_batcher(model: Any, *, batch_size: int, eos: int, device: str) -> Any:
    """An unopened `AutoregressiveBatcher` over `FullForward`: no KV cache, every step in full."""
    import torch

    return AutoregressiveBatcher(
        FullForward(model),
        stop_token=torch.tensor(eos, device=device),
        pad_value=torch.tensor(PAD, device=device),
        max_batch_size=batch_size,
    )


def hibachi_label(*, prefix_caching: bool = True) -> str:
    if uses_fallback():
        return "hibachi (stateless)"
    return "hibachi (KV cache)" if prefix_caching else "hibachi (KV cache, no prefix caching)"


def uses_fallback() -> bool:
    """Whether `with_hibachi` falls back to the stateless batcher."""
    try:
        importlib.import_module("hibachi.integrations.transformers")
    except ImportError:
        return True
    return False
