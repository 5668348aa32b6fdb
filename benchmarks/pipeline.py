"""Pipelined stages against the same stages composed into one model.

Two stand-in stages that do GIL-free work, each on its own thread in a
`hibachi.Pipeline`, against one model that calls both in turn, in one run:

- ``blas``: each stage multiplies the batch's rows (rows x W vectors of D
  float32) by a D x D matrix with a one-thread BLAS, so a stage's time grows
  with its rows (about 2 ms at 32 rows by default).
- ``sleep``: each stage sleeps a fixed time per call, whatever its rows.
- ``noop``: stages that do nothing: the cost of the hand-offs between threads.

Autoregressive: ``--clients`` concurrent streams of ``--tokens`` tokens each,
``max_batch_size=--batch``; feedforward: ``--items`` concurrent callers,
``max_batch_size=--batch``. Reported: throughput, the speed-up over the
composed model, and each stage's busy share (its time in calls / wall time).
The autoregressive pipeline also runs with ``groups=3``, and both with twice
the clients and twice ``max_batch_size`` (what "per group" would mean for the
pipeline: twice the rows). Speed-ups are against the first row of each table.
Each row runs ``--repeat`` times, interleaved with the others, and keeps its
best run: on a shared machine other work only ever slows a run down.

Usage: python benchmarks/pipeline.py [--work blas,sleep] [--clients 32] [--batch 32]
                                    [--switch-interval SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import hibachi

Stage = Callable[[Any], Any]


def blas_stage(dim: int, width: int, seed: int) -> Callable[[int], None]:
    weights = np.random.default_rng(seed).standard_normal((dim, dim)).astype(np.float32)
    inputs = np.ones((256 * width, dim), dtype=np.float32)

    def work(rows: int) -> None:
        inputs[: rows * width] @ weights

    return work


def noop_stage(rows: int) -> None:
    pass


def sleep_stage(seconds: float) -> Callable[[int], None]:
    def work(rows: int) -> None:
        time.sleep(seconds)

    return work


def ar_stages(work: list[Callable[[int], None]]) -> tuple[Any, Stage]:
    def first(tokens: Any, mask: Any) -> Any:
        work[0](len(tokens))
        return tokens[:, -1]

    def second(last: Any) -> Any:
        work[1](len(last))
        return (last + 1) % 1000

    return first, second


def ff_stages(work: list[Callable[[int], None]]) -> tuple[Stage, Stage]:
    def first(batch: Any) -> Any:
        work[0](len(batch))
        return batch * 2

    def second(batch: Any) -> Any:
        work[1](len(batch))
        return batch + 1

    return first, second


def composed(first: Any, second: Any) -> Any:
    return lambda *args: second(first(*args))


async def autoregressive(model: Any, clients: int, tokens: int, batch: int) -> dict[str, Any]:
    batcher = hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), padding_token=np.int64(0), max_batch_size=batch
    )
    async with batcher:
        await batcher.run(np.array([1]), max_new_tokens=4).collect()  # warm up
        before, start = batcher.stats().stage_busy, time.perf_counter()
        streams = [batcher.run(np.array([i]), max_new_tokens=tokens) for i in range(clients)]
        outputs = await asyncio.gather(*(stream.collect() for stream in streams))
        wall = time.perf_counter() - start
        after = batcher.stats().stage_busy
    assert all(len(out) == tokens for out in outputs)
    return report(clients * tokens / wall, wall, before, after)


async def feedforward(model: Any, items: int, batch: int) -> dict[str, Any]:
    batcher = hibachi.FeedforwardBatcher(model, max_batch_size=batch)
    async with batcher:
        await batcher.run(np.zeros(4))
        before, start = batcher.stats().stage_busy, time.perf_counter()
        results = await asyncio.gather(*(batcher.run(np.full(4, i)) for i in range(items)))
        wall = time.perf_counter() - start
        after = batcher.stats().stage_busy
    assert [int(r[0]) for r in results] == [2 * i + 1 for i in range(items)]
    return report(items / wall, wall, before, after)


def report(rate: float, wall: float, before: Any, after: Any) -> dict[str, Any]:
    busy = [(a - b) / wall for a, b in zip(after, before, strict=True)]
    return {"rate": rate, "wall": wall, "busy": busy}


def stage_times(work: list[Callable[[int], None]], rows: int) -> list[float]:
    times = []
    for stage in work:
        stage(rows)
        start = time.perf_counter()
        for _ in range(20):
            stage(rows)
        times.append((time.perf_counter() - start) / 20 * 1000)
    return times


def line(name: str, result: dict[str, Any], base: float, unit: str) -> str:
    busy = " ".join(f"{share:.0%}" for share in result["busy"]) or "—"
    return f"| {name} | {result['rate']:,.0f} {unit} | {result['rate'] / base:.2f}x | {busy} |"


def run_work(kind: str, args: argparse.Namespace) -> None:
    if kind == "blas":
        work = [blas_stage(args.dim, args.width, 0), blas_stage(args.dim, args.width, 1)]
    elif kind == "noop":  # the hand-offs alone: what a pipelined step costs besides its stages
        work = [noop_stage, noop_stage]
    else:
        work = [sleep_stage(args.sleep_ms / 1000), sleep_stage(args.sleep_ms / 1000)]
    full, half = stage_times(work, args.batch), stage_times(work, args.batch // 2)
    print(
        f"\n### {kind}: stage ms at {args.batch} rows {full[0]:.2f}, {full[1]:.2f}; "
        f"at {args.batch // 2} rows {half[0]:.2f}, {half[1]:.2f}"
    )
    first, second = ar_stages(work)
    clients, batch, tokens = args.clients, args.batch, args.tokens
    ar_runs: dict[str, Callable[[], Any]] = {
        "composed model": lambda: autoregressive(composed(first, second), clients, tokens, batch),
        "Pipeline (default: 2 groups)": lambda: autoregressive(
            hibachi.Pipeline(first, second), clients, tokens, batch
        ),
        "Pipeline (groups=3)": lambda: autoregressive(
            hibachi.Pipeline(first, second, groups=3), clients, tokens, batch
        ),
        f"composed model, {2 * clients} clients, max_batch_size={2 * batch}": lambda: (
            autoregressive(composed(first, second), 2 * clients, tokens, 2 * batch)
        ),
        f"Pipeline (2 groups), {2 * clients} clients, max_batch_size={2 * batch}": lambda: (
            autoregressive(hibachi.Pipeline(first, second), 2 * clients, tokens, 2 * batch)
        ),
    }
    print(f"\nAutoregressive: {clients} clients x {tokens} tokens, max_batch_size={batch}\n")
    table(ar_runs, args.repeat, "tok/s")
    ff_first, ff_second = ff_stages(work)
    ff_runs: dict[str, Callable[[], Any]] = {
        "composed model": lambda: feedforward(composed(ff_first, ff_second), args.items, batch),
        "Pipeline (groups=2: 2 batches in flight)": lambda: feedforward(
            hibachi.Pipeline(ff_first, ff_second, groups=2), args.items, batch
        ),
        "Pipeline (default: 3 batches in flight)": lambda: feedforward(
            hibachi.Pipeline(ff_first, ff_second), args.items, batch
        ),
    }
    print(f"\nFeedforward: {args.items} callers, max_batch_size={batch}\n")
    table(ff_runs, args.repeat, "items/s")


def table(runs: dict[str, Callable[[], Any]], repeat: int, unit: str) -> None:
    """Each run ``repeat`` times, interleaved; the best of each (a shared machine only slows)."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            result = asyncio.run(run())
            if name not in best or result["rate"] > best[name]["rate"]:
                best[name] = result
    print("| model | throughput | speed-up | stage busy |\n|---|--:|--:|--:|")
    base = next(iter(best.values()))["rate"]
    for name, result in best.items():
        print(line(name, result, base, unit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="blas,sleep")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--items", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512, help="D of the blas stages")
    parser.add_argument("--width", type=int, default=8, help="vectors of D per row (blas)")
    parser.add_argument("--sleep-ms", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each row; the best is kept")
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval (seconds)"
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    print(
        f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs, "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    with threadpool_limits(1):
        for kind in args.work.split(","):
            run_work(kind, args)


if __name__ == "__main__":
    main()
