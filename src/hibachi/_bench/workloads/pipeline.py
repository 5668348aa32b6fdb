"""Workload 5, pipeline: two stages in a `hibachi.Pipeline` against the same two composed.

By default each stand-in stage multiplies its rows (``width`` vectors of
``dim`` each) by a ``dim`` x ``dim`` matrix with one PyTorch thread, which
releases the GIL: the pipeline's two stages compute on two cores at once, the
composed model's one after the other (``blas``). ``work`` may add stages that
sleep ``sleep_ms`` per call whatever their rows (``sleep``: a fixed cost, as a
device's) and stages that do nothing (``noop``: the hand-offs between threads
alone). Autoregressive (``clients`` streams of ``tokens`` tokens,
``max_batch_size=batch_size`` in all) and feedforward (``items`` concurrent
callers, batches of ``batch_size``); each method's best of ``repeat`` runs,
and each stage's busy share (its time in calls / wall time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hibachi

from ..environment import torch_threads
from ..output.progress import Progress
from ..results import Column, Section
from ..settings import BenchSettings, PipelineSize
from ..timing.runs import best_of, run_async

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
    progress.begin("pipeline", 4 * len(size.work))
    section = Section("pipeline", _title(size), COLUMNS, settings=vars(size).copy())
    within = None if settings.repeat_within is None else max(30.0, settings.repeat_within)
    with torch_threads(1):
        for work in size.work:
            prefix = "" if size.work == ("blas",) else f"{work}: "
            _measure_work(section, progress, size, work, prefix, within)
    section.notes += [
        f"AR: {size.clients} clients x {size.tokens} tokens, max_batch_size={size.batch_size} "
        "(in all: two groups share it); FF: "
        f"{size.items} callers, batches of {size.batch_size}. Speed-up: over the composed model "
        "of the same batcher. Stage busy: each stage's time in its calls over the wall time.",
    ]
    return section


def _title(size: PipelineSize) -> str:
    blas = f"{size.dim}x{size.dim} matmuls, 1 thread each"
    if size.work == ("blas",):
        return f"Pipeline: 2 stages ({blas}) vs composed"
    what = {"blas": f"blas: {blas}", "sleep": f"sleep: {size.sleep_ms:g} ms a call", "noop": "noop"}
    return f"Pipeline: 2 stages ({'; '.join(what[w] for w in size.work)}) vs composed"


def _measure_work(
    section: Section,
    progress: Progress,
    size: PipelineSize,
    work: str,
    prefix: str,
    within: float | None,
) -> None:
    first, second = _stages(size, 0, work), _stages(size, 1, work)
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
        progress.doing(prefix + method)
        try:
            result = _best(run, size.repeat, within)
        except Exception as exc:
            section.fail(prefix + method, exc)
            continue
        base = result["rate"] if "composed" in method else base
        busy = " ".join(f"{share:.0%}" for share in result["busy"]) or "—"
        speedup = result["rate"] / base if base else None
        section.add(
            prefix + method, rate=result["rate"], unit=f"{unit}/s", speedup=speedup, busy=busy
        )


def _best(run: Callable[[], Any], repeat: int, within: float | None) -> Result:
    def once() -> Result:
        result: Result = run_async(run())
        return result

    return best_of(once, _rate, repeat, within)


def _rate(result: Result) -> float:
    return float(result["rate"])


def _stages(size: PipelineSize, seed: int, work: str) -> Callable[..., Any]:
    """A stage of both contracts: (tokens, mask) -> last column, or batch -> batch."""
    compute = _work(size, seed, work)

    def stage(x: Any, mask: Any = None) -> Any:
        compute(len(x))
        return x if mask is None else x[:, -1]

    return stage


def _work(size: PipelineSize, seed: int, work: str) -> Callable[[int], None]:
    """What a stage does for ``rows`` rows."""
    if work == "sleep":
        return lambda rows: time.sleep(size.sleep_ms / 1000)
    if work == "noop":
        return lambda rows: None
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(size.dim, size.dim, generator=generator)
    inputs = torch.ones(4 * size.batch_size * size.width, size.dim)

    def multiply(rows: int) -> None:
        torch.mm(inputs[: rows * size.width], weights)

    return multiply


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
