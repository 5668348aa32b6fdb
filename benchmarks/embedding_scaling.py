"""Embeddings by concurrent callers: hibachi against one model call per text, in one run.

The scaling workload of ``hibachi bench`` (all-MiniLM-L6-v2, texts of 4-120
words, each of ``c`` callers embedding ``--per-client`` texts one after the
other, ``max_batch_size`` 32) at each concurrency, with PyTorch on
``--threads`` threads. Three methods alternate for ``--rounds`` rounds at each
concurrency (the order turns each round):

- hibachi: the callers await ``FeedforwardBatcher.run``, whose engine thread
  runs the model;
- one call per text: every text through the model in a plain loop on the main
  thread (the target: hibachi never below it, aim 1.2x);
- one call per text on a worker thread: the same calls, each awaited through a
  one-thread executor, as an async server without a batcher must run them (a
  second reference, not the target).

``--release-loop-pool``: before each run of the two methods on another thread,
the main thread ends its OpenMP workers (``hibachi._bench.openmp``), as an
application whose event-loop thread never runs the model would have none: on
as many torch threads as CPUs, libgomp stops spinning while two threads own
pools (see docs/cpu-threads.md). One call per text on the main thread is
measured as it is either way.

Prints each method's median texts/s, and hibachi's ratio to each reference as
the median of the rounds' ratios with the lowest and highest, and its best-of
ratio; with the load average before and after.

Usage: python benchmarks/embedding_scaling.py [--threads 1] [--concurrency 1,2,4,8,16,32,64]
       [--per-client 4] [--min-texts 32] [--rounds 5] [--no-worker] [--release-loop-pool]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Coroutine
from typing import Any

from hibachi._bench.minilm import MiniLM, load_minilm, make_texts
from hibachi._bench.openmp import release_openmp_pool
from hibachi._bench.rounds import alternate, ratio_summary
from hibachi._bench.scaling import alone_on_worker_curve, embedding_curve
from hibachi._bench.settings import ScalingSize
from hibachi._bench.timing import run_async

ALONE = "one call per text"
WORKER = "... on a worker thread"
HIBACHI = "hibachi"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--min-texts", type=int, default=32, help="texts in all, at least")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-worker", action="store_true", help="skip the worker-thread method")
    parser.add_argument(
        "--release-loop-pool",
        action="store_true",
        help="end the main thread's OpenMP workers before each run on another thread",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.concurrency.split(",")]
    size = ScalingSize(0, 0, args.per_client, 1, min_texts=args.min_texts, rounds=args.rounds)
    minilm = load_minilm("cpu")
    texts = make_texts(max(size.texts_at(c) for c in counts), (4, 120), 0)
    load = os.getloadavg()[0]
    figures = {}
    for c in counts:
        methods = _methods(minilm, texts[: size.texts_at(c)], c, args)
        figures[c] = alternate(methods, args.rounds)
    released = ", the main thread's OpenMP pool released" if args.release_loop_pool else ""
    print(
        f"texts/s, all-MiniLM-L6-v2, {args.threads} thread(s){released}, median of "
        f"{args.rounds} alternating rounds; load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    _print(counts, size, figures)


def _methods(
    minilm: MiniLM, texts: list[str], callers: int, args: argparse.Namespace
) -> dict[str, Callable[[], float]]:
    def alone() -> float:
        return len(texts) / _timed(lambda: [minilm.alone(text) for text in texts])

    def on_other_thread(run: Callable[[], Coroutine[Any, Any, float]]) -> Callable[[], float]:
        def measured() -> float:
            if args.release_loop_pool and not release_openmp_pool():
                raise SystemExit("--release-loop-pool: torch bundles no libgomp that can")
            return run_async(run())

        return measured

    methods = {
        ALONE: alone,
        HIBACHI: on_other_thread(lambda: embedding_curve(minilm, texts, callers, args.batch_size)),
    }
    if not args.no_worker:
        methods[WORKER] = on_other_thread(lambda: alone_on_worker_curve(minilm, texts, callers))
    return methods


def _timed(run: Callable[[], object]) -> float:
    import time

    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _print(
    counts: list[int], size: ScalingSize, figures: dict[int, dict[str, list[float]]]
) -> None:
    worker = WORKER in figures[counts[0]]
    head = f"  {'callers':>7} {'texts':>5} {ALONE:>17} {'hibachi':>8} {'ratio, median [range]':>23}"
    head += f" {'best-of':>7}"
    if worker:
        head += f" {'on a worker thread':>18} {'hibachi / worker':>23}"
    print(head)
    for c in counts:
        f = figures[c]
        line = (
            f"  {c:>7} {size.texts_at(c):>5} {statistics.median(f[ALONE]):17.1f} "
            f"{statistics.median(f[HIBACHI]):8.1f} {ratio_summary(f[HIBACHI], f[ALONE])!s:>23}"
            f" {max(f[HIBACHI]) / max(f[ALONE]):6.2f}x"
        )
        if worker:
            line += (
                f" {statistics.median(f[WORKER]):18.1f} "
                f"{ratio_summary(f[HIBACHI], f[WORKER])!s:>23}"
            )
        print(line)


if __name__ == "__main__":
    main()
