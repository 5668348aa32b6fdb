"""Workload 1, generation: N concurrent clients of a causal LM, five ways to serve them.

The model is SmolLM2-135M-Instruct on chat prompts by default, the
random-weight Llama with ``--model tiny`` (`models.language`).

- hibachi: every client streams from one batcher at once (continuous batching);
- ``generate()`` one request at a time, in arrival order;
- static batching: ``generate()`` on left-padded groups of ``batch_size``
  requests in arrival order, each group running until its longest member ends;
- transformers' own continuous batching (the manager behind ``generate_batch``);
- the limit: ``generate()`` on one left-padded batch of every request at once,
  as if they all arrived together and no batch had to wait for a free row.

Each reports tokens/s, time to first token (from the moment every client has
arrived), time per output token after the first, and how many requests got
the same greedy tokens as ``generate()``; hibachi's rows also the most
requests it ran at once, the most memory its paged keys and values held, and
the share of prompt tokens its prefix cache found. A second hibachi row runs
with prefix caching off, for the difference it makes (not in the quick preset).
"""

from __future__ import annotations

import functools
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
from ..models.language import GenerationModel, generation_model
from ..output.progress import Progress
from ..results import Column, Section
from ..settings import BenchSettings, GenerationSize
from ..timing.rounds import ratio_summary, rotated
from ..timing.runs import best_of

__all__ = ["CONTINUOUS", "GENERATE", "LIMIT", "STATIC", "measure"]

COLUMNS = [
    Column("tokens_per_s", "tokens/s", "{:,.0f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("ttft_p50_ms", "TTFT p50", "{:,.0f} ms"),
    Column("ttft_p95_ms", "TTFT p95", "{:,.0f} ms"),
    Column("tpot_p50_ms", "TPOT p50", "{:,.0f} ms"),
    Column("tpot_p95_ms", "TPOT p95", "{:,.0f} ms"),
    Column("same_as_generate", "= generate()", "{}"),
    Column("outside_model", "outside forward", "{:.0%}"),
    Column("rows_at_once", "rows at once", "{:,}"),
    Column("peak_kv_mib", "peak KV", "{:,.1f} MiB"),
    Column("prefix_hit_rate", "prefix hits", "{:.0%}"),
]
GENERATE = "generate(), one at a time"
STATIC = "generate(), static batches"
CONTINUOUS = "transformers generate_batch"
LIMIT = "generate(), one padded batch (the limit)"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.generation
    methods_count = 6 if size.prefix_caching_row else 5
    progress.begin("generation", 1 + methods_count * max(1, size.rounds))
    progress.doing("loading the model")
    served = generation_model(size, settings.device, settings.seed)
    model = served.model
    requests = served.requests(size.clients, size.prompt_lengths, size.budgets, settings.seed)
    lengths = [len(r.prompt) for r in requests]
    title = _title(size, served, (min(lengths), max(lengths)))
    section = Section("generation", title, COLUMNS, settings=_settings(size, served))
    device, batch = settings.device, size.batch_size
    methods: dict[str, Callable[[], Outcome]] = {
        GENERATE: lambda: one_at_a_time(model, requests, device),
        hibachi_label(): lambda: with_hibachi(model, requests, batch, device),
    }
    if size.prefix_caching_row and not uses_fallback():
        methods[hibachi_label(prefix_caching=False)] = lambda: with_hibachi(
            model, requests, batch, device, prefix_caching=False
        )
    methods |= {
        STATIC: lambda: static_batches(model, requests, batch, device),
        CONTINUOUS: lambda: continuous_batching(model, requests, batch),
        LIMIT: lambda: one_batch(model, requests, device),
    }
    runs = _run(methods, settings, progress)
    reference = runs[GENERATE]
    if isinstance(reference, Exception):
        raise reference
    for name, outcomes in runs.items():
        if isinstance(outcomes, Missing):
            section.skip(name, str(outcomes))
        elif isinstance(outcomes, Exception):
            section.fail(name, outcomes)
        else:
            _record(section, name, _best(outcomes), _best(reference))
    _notes(section, served)
    if size.rounds > 1:
        section.notes.append(_ratio_note(runs, size.rounds))
    return section


Runs = dict[str, "list[Outcome] | Exception"]


def _run(
    methods: dict[str, Callable[[], Outcome]], settings: BenchSettings, progress: Progress
) -> Runs:
    """Each method's outcomes, or the exception that stopped it: the best of its repeats, one
    method after the other; or with ``rounds``, every method once a round, the order
    turning from round to round (`timing.rounds`)."""
    size = settings.generation
    runs: Runs = {name: [] for name in methods}
    if not size.rounds:
        for name, run in methods.items():
            progress.doing(name)
            best = functools.partial(
                best_of, run, _tokens_per_s, size.repeat, settings.repeat_within
            )
            runs[name] = _attempt(best, [])
        return runs
    for r in range(size.rounds):
        for name in rotated(list(methods), r):
            done = runs[name]
            if isinstance(done, list):
                progress.doing(f"{name}, round {r + 1}")
                runs[name] = _attempt(methods[name], done)
    return runs


def _attempt(run: Callable[[], Outcome], done: list[Outcome]) -> list[Outcome] | Exception:
    """``done`` and ``run()``'s outcome, or the exception ``run`` raised."""
    try:
        return [*done, run()]
    except Exception as exc:
        return exc


def _best(outcomes: list[Outcome] | Exception) -> Outcome:
    assert isinstance(outcomes, list)
    return max(outcomes, key=_tokens_per_s)


def _ratio_note(runs: Runs, rounds: int) -> str:
    """hibachi's tokens/s over each other method's, round by round: median [lowest-highest]."""
    mine = runs[hibachi_label()]
    if not isinstance(mine, list):
        return "no ratios: hibachi did not run"
    parts = []
    for name, theirs in runs.items():
        if name != hibachi_label() and isinstance(theirs, list):
            summary = ratio_summary(
                [o.tokens_per_s for o in mine], [o.tokens_per_s for o in theirs]
            )
            parts.append(f"{name} {summary}")
    return (
        f"tokens/s, each method's best of {rounds} rounds in which every method ran once, "
        "the order turning; hibachi / each, the median of the rounds' ratios "
        f"[lowest-highest]: {'; '.join(parts)}"
    )


def _tokens_per_s(outcome: Outcome) -> float:
    return outcome.tokens_per_s


def _record(section: Section, name: str, outcome: Outcome, reference: Outcome) -> None:
    matched = sum(a == b for a, b in zip(outcome.tokens, reference.tokens, strict=True))
    first_ms = np.asarray(outcome.first_token) * 1e3
    tpot_ms = np.asarray(outcome.per_output_token()) * 1e3
    section.add(
        name,
        tokens_per_s=outcome.tokens_per_s,
        speedup=outcome.tokens_per_s / reference.tokens_per_s,
        ttft_p50_ms=float(np.percentile(first_ms, 50)),
        ttft_p95_ms=float(np.percentile(first_ms, 95)),
        tpot_p50_ms=_percentile(tpot_ms, 50),
        tpot_p95_ms=_percentile(tpot_ms, 95),
        same_as_generate=f"{matched}/{len(reference.tokens)}",
        outside_model=outcome.outside_model,
        outside_step=outcome.outside_step,
        rows_at_once=outcome.rows_at_once,
        peak_kv_mib=None if outcome.peak_kv_bytes is None else outcome.peak_kv_bytes / 2**20,
        peak_kv_bytes=outcome.peak_kv_bytes,
        prefix_hit_rate=outcome.prefix_hit_rate,
        matched=matched == len(reference.tokens),
        tokens=sum(map(len, outcome.tokens)),
        seconds=outcome.seconds,
    )


def _percentile(values: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile of the values that are numbers; None if none is."""
    known = values[~np.isnan(values)]
    return float(np.percentile(known, q)) if known.size else None


def _title(size: GenerationSize, served: GenerationModel, lengths: tuple[int, int]) -> str:
    blo, bhi = size.budgets
    model = f"{served.name} {_millions(served.parameters)} params, {served.dtype}"
    prompts = "chat prompts" if served.tokenizer is not None else "prompts"
    return (
        f"Generation: {model}, {size.clients} clients, {prompts} of {lengths[0]}-{lengths[1]} "
        f"tokens, budgets {blo}-{bhi}, batch size {size.batch_size}"
    )


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count / 1e3:.0f}k"


def _settings(size: GenerationSize, served: GenerationModel) -> dict[str, Any]:
    return {
        "model_name": served.name,
        "model_origin": served.origin,
        "load_seconds": served.load_seconds,
        "parameters": served.parameters,
        "dtype": served.dtype,
        **size.__dict__,
    }


def _notes(section: Section, served: GenerationModel) -> None:
    section.notes.append(
        "TTFT: time to first token, counted from the moment every client has arrived. "
        "TPOT: each request's time per output token after its first (as a client streaming "
        "it saw them come). outside forward: the share of hibachi's busy time spent outside "
        "model.forward (the adapter's own work counts). the limit: one padded batch of "
        "every request. rows at once: the most requests hibachi ran at once. peak KV: the "
        "most memory its paged keys and values held at once (blocks of rows and of cached "
        "prefixes). prefix hits: the share of prompt tokens found in its prefix cache (the "
        "chat template's system prompt is every prompt's prefix), not computed again; "
        "'no prefix caching' is the same batcher with prefix_caching=False."
    )
    if served.note:
        section.notes.append(served.note)
    if served.origin:
        section.notes.append(f"model: {served.origin}, loaded in {served.load_seconds:.1f} s")
    if uses_fallback():
        section.notes.append(
            "hibachi.integrations.transformers is not available: hibachi runs the stateless "
            "AutoregressiveBatcher, which re-reads every sequence in full at each step "
            "(no KV cache)."
        )
