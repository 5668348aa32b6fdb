"""Workload 5, pipeline: two stages in a `hibachi.Pipeline` against the same two composed.

Each stand-in stage multiplies its rows (``width`` vectors of ``dim`` each)
by a ``dim`` x ``dim`` matrix with one PyTorch thread, which releases the GIL:
the pipeline's two stages compute on two cores at once, the composed model's
one after the other. Autoregressive (``clients`` streams of ``tokens``
tokens, ``max_batch_size=batch_size`` in all) and feedforward (``items``
concurrent callers, batches of ``batch_size``); each method's best of
``repeat`` runs, and each stage's busy share (its time in calls / wall time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hibachi

from .environment import torch_threads
from .progress import Progress
from .results import Column, Section
from .settings import BenchSettings, PipelineSize
from .timing import best_of, run_async

__all__ = ["measure"]

COLUMNS = [
    Column("rate", "per second", "{:,.0f}"),
    Column("unit", "unit", "{}"),
    Column("speedup", "speed-up", "{:.2f}x"),
    Column("busy", "stage busy", "{}"),
]

Result = dict[str, Any]


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.pipeline
    progress.begin("pipeline", 4)
    title = f"Pipeline: 2 stages ({size.dim}x{size.dim} matmuls, 1 thread each) vs composed"
    section = Section("pipeline", title, COLUMNS, settings=vars(size).copy())
    with torch_threads(1):
        first, second = _stages(size, 0), _stages(size, 1)
        runs: list[tuple[str, str, Callable[[], Any]]] = [
            ("AR: composed model", "tok", lambda: _ar(_compose(first, second), size)),
            ("AR: Pipeline (2 groups)", "tok", lambda: _ar(hibachi.Pipeline(first, second), size)),
            ("FF: composed model", "item", lambda: _ff(_compose(first, second), size)),
            (
                "FF: Pipeline (3 in flight)",
                "item",
                lambda: _ff(hibachi.Pipeline(first, second), size),
            ),
        ]
        base = 0.0
        for method, unit, run in runs:
            progress.doing(method)
            try:
                result = _best(run, size.repeat)
            except Exception as exc:
                section.fail(method, exc)
                continue
            base = result["rate"] if "composed" in method else base
            busy = " ".join(f"{share:.0%}" for share in result["busy"]) or "—"
            speedup = result["rate"] / base if base else None
            section.add(method, rate=result["rate"], unit=f"{unit}/s", speedup=speedup, busy=busy)
    section.notes += [
        f"AR: {size.clients} clients x {size.tokens} tokens, max_batch_size={size.batch_size} "
        "(in all: two groups share it); FF: "
        f"{size.items} callers, batches of {size.batch_size}. Speed-up: over the composed model "
        "of the same batcher. Stage busy: each stage's time in its calls over the wall time.",
    ]
    return section


def _best(run: Callable[[], Any], repeat: int) -> Result:
    def once() -> Result:
        result: Result = run_async(run())
        return result

    return best_of(once, _rate, repeat, 30.0)


def _rate(result: Result) -> float:
    return float(result["rate"])


def _stages(size: PipelineSize, seed: int) -> Callable[..., Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(size.dim, size.dim, generator=generator)
    inputs = torch.ones(4 * size.batch_size * size.width, size.dim)

    def stage(x: Any, mask: Any = None) -> Any:
        torch.mm(inputs[: len(x) * size.width], weights)
        return x if mask is None else x[:, -1]

    return stage


def _compose(first: Callable[..., Any], second: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: second(first(*args))


async def _ar(model: Any, size: PipelineSize) -> Result:
    batcher = hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=size.batch_size
    )
    async with batcher:
        before, start = batcher.stats().stage_busy, time.perf_counter()
        prompts = [np.array([i]) for i in range(size.clients)]
        streams = [batcher.run(p, max_new_tokens=size.tokens) for p in prompts]
        await asyncio.gather(*(stream.collect() for stream in streams))
        wall = time.perf_counter() - start
        after = batcher.stats().stage_busy
    return _result(size.clients * size.tokens / wall, wall, before, after)


async def _ff(model: Any, size: PipelineSize) -> Result:
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=size.batch_size)
    async with batcher:
        before, start = batcher.stats().stage_busy, time.perf_counter()
        await asyncio.gather(*(batcher.run(np.full(4, i)) for i in range(size.items)))
        wall = time.perf_counter() - start
        after = batcher.stats().stage_busy
    return _result(size.items / wall, wall, before, after)


def _result(rate: float, wall: float, before: Any, after: Any) -> Result:
    busy = [(a - b) / wall for a, b in zip(after, before, strict=True)]
    return {"rate": rate, "busy": busy}
