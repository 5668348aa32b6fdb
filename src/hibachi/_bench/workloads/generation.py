"""Workload 1, generation: N concurrent clients of a small Llama, five ways to serve them.

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

from collections.abc import Callable
from typing import Any

import numpy as np

from ..methods.generate import (
    Missing,
    continuous_batching,
    one_at_a_time,
    one_batch,
    static_batches,
)
from ..methods.outcome import Outcome
from ..methods.streams import hibachi_label, uses_fallback, with_hibachi
from ..models.llama import build_llama, parameters
from ..models.requests import make_requests
from ..output.progress import Progress
from ..results import Column, Section
from ..settings import BenchSettings, GenerationSize
from ..timing.runs import best_of

__all__ = ["CONTINUOUS", "GENERATE", "LIMIT", "STATIC", "measure"]

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
        except Missing as exc:
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
        outside_step=outcome.outside_step,
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
