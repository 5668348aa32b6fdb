"""One MiniLM forward at a time, on the main thread or another, with one or two OpenMP pools.

Shows the cost that docs/cpu-threads.md explains: with as many torch threads
as CPUs, GNU libgomp stops spinning once a second thread owns a pool of
OpenMP workers, and every forward in the process gets slower. Conditions
alternate for ``--rounds`` rounds in one process (the order turns each
round), 24 texts of 4-120 words each; prints the median forward and the
median of per-forward ratios to the main thread's (same text, same round)
with the per-round ratios' range, and the load average.

Usage: python benchmarks/openmp_pools.py [--threads 2] [--rounds 6]
       (run it again with OMP_WAIT_POLICY=PASSIVE or ACTIVE set to compare)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from hibachi._bench.minilm import PAD_VALUE, load_minilm, make_texts
from hibachi._bench.openmp import release_openmp_pool
from hibachi._bench.rounds import alternate, ratio_summary

Forwards = list[float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    bench = _Forwards(load_minilm("cpu"))
    conditions = bench.conditions()
    results: dict[str, list[Forwards]] = {name: [] for name in conditions}

    def collect(name: str) -> float:
        results[name].append(conditions[name]())
        return 0.0

    alternate({name: (lambda name=name: collect(name)) for name in conditions}, args.rounds)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"{args.threads} torch thread(s), OMP_WAIT_POLICY {policy}, {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}; forward median, and per forward / main's:"
    )
    base = results[next(iter(conditions))]
    for name, runs in results.items():
        flat = [x for run in runs for x in run]
        paired = [
            x / y
            for run, ref in zip(runs, base, strict=True)
            for x, y in zip(run, ref, strict=True)
        ]
        spread = ratio_summary([sum(r) for r in runs], [sum(r) for r in base])
        print(
            f"  {name:<48} {statistics.median(flat) * 1e3:7.2f} ms "
            f"{statistics.median(paired):5.2f}x  (per round {spread.low:.2f}-{spread.high:.2f})"
        )


class _Forwards:
    """The timed forwards of each condition."""

    def __init__(self, minilm: Any) -> None:
        self.minilm = minilm
        self.items = [minilm.tokenize(t) for t in make_texts(24, (4, 120), 0)]
        self.seconds: Forwards = []

    def model(self, batch: dict[str, Any]) -> Any:
        start = time.perf_counter()
        out = self.minilm(batch)
        self.seconds.append(time.perf_counter() - start)
        return out

    def loop(self) -> Forwards:
        self.seconds = []
        for item in self.items:
            self.model({k: v[None] for k, v in item.items()})
        return list(self.seconds)  # a copy: a later warm-up call must not add to it

    async def hibachi(self) -> Forwards:
        import hibachi

        batcher = hibachi.FeedforwardBatcher(self.model, max_batch_size=32, pad_value=PAD_VALUE)
        async with batcher:
            await batcher.run(self.items[0])
            self.seconds = []
            for item in self.items:
                await batcher.run(item)
        return list(self.seconds)

    def conditions(self) -> dict[str, Callable[[], Forwards]]:
        def hibachi() -> Forwards:
            return asyncio.run(self.hibachi())

        return {
            "main thread, its pool the only one": _with_main_pool(self.loop),
            "a fresh thread, main's pool alive": _with_main_pool(lambda: _fresh(self.loop)),
            "a fresh thread, main's pool released": _released(lambda: _fresh(self.loop)),
            "main thread, an idle thread owning a pool": _with_main_pool(
                lambda: _second_pool_during(self.loop)
            ),
            "hibachi's engine thread, main's pool alive": _with_main_pool(hibachi),
            "hibachi's engine thread, main's pool released": _released(hibachi),
        }


def _settle() -> None:
    time.sleep(0.05)  # the last region's workers stop spinning


def _parallel_region() -> None:
    import torch

    torch.ones(1 << 20).add_(1)


def _with_main_pool(run: Callable[[], Forwards]) -> Callable[[], Forwards]:
    def measured() -> Forwards:
        _parallel_region()
        _settle()
        return run()

    return measured


def _released(run: Callable[[], Forwards]) -> Callable[[], Forwards]:
    def measured() -> Forwards:
        if not release_openmp_pool():
            raise SystemExit("torch bundles no libgomp that can release a pool")
        _settle()
        return run()

    return measured


def _fresh(run: Callable[[], Forwards]) -> Forwards:
    out: list[Forwards] = []
    thread = threading.Thread(target=lambda: out.append(run()))
    thread.start()
    thread.join()
    return out[0]


def _second_pool_during(run: Callable[[], Forwards]) -> Forwards:
    owning, done = threading.Event(), threading.Event()

    def idle() -> None:
        _parallel_region()
        owning.set()
        done.wait()

    thread = threading.Thread(target=idle)
    thread.start()
    owning.wait()
    _settle()
    try:
        return run()
    finally:
        done.set()
        thread.join()


if __name__ == "__main__":
    main()
