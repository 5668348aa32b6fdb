"""Workload 1, generation: N concurrent clients of a small Llama, four ways to serve them.

- hibachi: every client streams from one batcher at once (continuous batching);
- ``generate()`` one request at a time, in arrival order;
- static batching: ``generate()`` on left-padded groups of ``batch_size``
  requests in arrival order, each group running until its longest member ends;
- transformers' own continuous batching (the manager behind ``generate_batch``);
- the limit: ``generate()`` on one left-padded batch of every request at once,
  as if they all arrived together and no batch had to wait for a free row.

Each reports tokens/s, time to first token (from the moment every client has
arrived) and how many requests got the same greedy tokens as ``generate()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .llm import (
    LlmRequest,
    build_llama,
    hibachi_label,
    make_requests,
    parameters,
    stateless_batcher,
    trim,
    uses_fallback,
)
from .progress import Progress
from .results import Column, Section
from .serving import Outcome, serve_with_hibachi
from .settings import BenchSettings, GenerationSize
from .step_share import kv_cache_run
from .timing import best_of, run_async

__all__ = [
    "Outcome",
    "continuous_batching",
    "measure",
    "one_at_a_time",
    "one_batch",
    "serve_with_hibachi",
    "static_batches",
    "with_hibachi",
]

COLUMNS = [
    Column("tokens_per_s", "tokens/s", "{:,.0f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("ttft_p50_ms", "TTFT p50", "{:,.0f} ms"),
    Column("ttft_p95_ms", "TTFT p95", "{:,.0f} ms"),
    Column("same_as_generate", "= generate()", "{}"),
    Column("outside_model", "outside forward", "{:.0%}"),
]
GENERATE = "generate(), one at a time"
STATIC = "generate(), static batches"
CONTINUOUS = "transformers generate_batch"
LIMIT = "generate(), one padded batch (the limit)"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.generation
    progress.begin("generation", 5)
    progress.doing("building a random-weight Llama")
    model = build_llama(size, settings.device, settings.seed)
    requests = make_requests(
        size.clients, size.prompt_lengths, size.budgets, size.vocab, settings.seed
    )
    section = Section(
        "generation", _title(size, parameters(model)), COLUMNS, settings=_settings(size, model)
    )
    device, batch = settings.device, size.batch_size

    def best(run: Callable[[], Outcome]) -> Outcome:
        return best_of(run, _tokens_per_s, size.repeat, settings.repeat_within)

    progress.doing(GENERATE)
    reference = best(lambda: one_at_a_time(model, requests, device))
    _record(section, GENERATE, reference, reference)
    methods: list[tuple[str, Callable[[], Outcome]]] = [
        (hibachi_label(), lambda: with_hibachi(model, requests, batch, device)),
        (STATIC, lambda: static_batches(model, requests, batch, device)),
        (CONTINUOUS, lambda: continuous_batching(model, requests, batch)),
        (LIMIT, lambda: one_batch(model, requests, device)),
    ]
    for name, run in methods:
        progress.doing(name)
        try:
            _record(section, name, best(run), reference)
        except _Missing as exc:
            section.skip(name, str(exc))
        except Exception as exc:
            section.fail(name, exc)
    _notes(section)
    return section


def _tokens_per_s(outcome: Outcome) -> float:
    return outcome.tokens_per_s


def _record(section: Section, name: str, outcome: Outcome, reference: Outcome) -> None:
    matched = sum(a == b for a, b in zip(outcome.tokens, reference.tokens, strict=True))
    first_ms = np.asarray(outcome.first_token) * 1e3
    section.add(
        name,
        tokens_per_s=outcome.tokens_per_s,
        speedup=outcome.tokens_per_s / reference.tokens_per_s,
        ttft_p50_ms=float(np.percentile(first_ms, 50)),
        ttft_p95_ms=float(np.percentile(first_ms, 95)),
        same_as_generate=f"{matched}/{len(reference.tokens)}",
        outside_model=outcome.outside_model,
        matched=matched == len(reference.tokens),
        tokens=sum(map(len, outcome.tokens)),
        seconds=outcome.seconds,
    )


def _title(size: GenerationSize, params: int) -> str:
    lo, hi = size.prompt_lengths
    blo, bhi = size.budgets
    return (
        f"Generation: Llama {_millions(params)} params (random weights), {size.clients} clients, "
        f"prompts {lo}-{hi} tokens, budgets {blo}-{bhi}, batch size {size.batch_size}"
    )


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count / 1e3:.0f}k"


def _settings(size: GenerationSize, model: Any) -> dict[str, Any]:
    return {"parameters": parameters(model), "dtype": str(model.dtype), **size.__dict__}


def _notes(section: Section) -> None:
    section.notes.append(
        "TTFT: time to first token, counted from the moment every client has arrived. "
        "outside forward: the share of hibachi's busy time spent outside model.forward "
        "(the adapter's own work counts). the limit: one padded batch of every request."
    )
    if uses_fallback():
        section.notes.append(
            "hibachi.integrations.transformers is not available: hibachi runs the stateless "
            "AutoregressiveBatcher, which re-reads every sequence in full at each step "
            "(no KV cache)."
        )


# -- the four ways to serve the clients -----------------------------------------------


def with_hibachi(model: Any, requests: list[LlmRequest], batch_size: int, device: str) -> Outcome:
    """Every request streamed at once through a new hibachi batcher over ``model``.

    With `hibachi.integrations.transformers` installed, this is the KV-cache
    adapter that ``causal_lm_batcher`` builds, timed step by step
    (`step_share.kv_cache_run`); otherwise the stateless fallback.
    """
    eos = model.generation_config.eos_token_id
    if uses_fallback():
        batcher = stateless_batcher(model, batch_size=batch_size, eos=eos, device=device)
        return run_async(serve_with_hibachi(batcher, requests, device))
    outcome, share = kv_cache_run(model, requests, batch_size=batch_size, eos=eos)
    outcome.outside_model = share.outside_forward
    return outcome


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
    start = time.perf_counter()
    for group in groups:
        ids, mask = _left_padded([r.prompt for r in group], device)
        streamer = _FirstToken()
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max(r.budget for r in group),
            streamer=streamer,
        )
        new = out[:, ids.shape[1] :].tolist()
        tokens += [trim(row, r.budget, eos) for row, r in zip(new, group, strict=True)]
        first += [streamer.at - start] * len(group)
    return Outcome(tokens, first, time.perf_counter() - start)


def _left_padded(prompts: list[list[int]], device: str) -> tuple[Any, Any]:
    import torch

    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


class _FirstToken:
    """A ``generate()`` streamer that notes when the first new tokens come out."""

    def __init__(self) -> None:
        self.calls = 0
        self.at = math.nan

    def put(self, value: Any) -> None:
        self.calls += 1  # the first call carries the prompt
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def continuous_batching(model: Any, requests: list[LlmRequest], batch_size: int) -> Outcome:
    """transformers' continuous batching, every request added at once, own budget each.

    This is the manager ``generate_batch`` runs, used directly so that each
    request keeps its own ``max_new_tokens``. Its cache is sized for the
    workload: left to guess on a CPU it allocates for seconds.
    """
    if not hasattr(model, "continuous_batching_context_manager"):
        raise _Missing("needs transformers >= 4.56: pip install 'hibachi-batch[bench]'")
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
    first = [(r.timestamps or [math.nan])[0] - start for r in ordered]
    return Outcome(tokens, first, seconds)


class _Missing(RuntimeError):
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
