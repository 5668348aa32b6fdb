"""Where a feedforward item's cost goes: CPU time per item on each thread, and the hops.

The overhead workload (identity model, batches of 64, ``--callers`` concurrent
caller tasks) through `hibachi.FeedforwardBatcher`, reporting per item the CPU
time of the event loop's thread and of the engine's thread, how many hops
into the loop carried the results, and how often the engine slept; then the
bare asyncio floor for comparison, and a split of ``run()``'s own cost
against ``loop.create_future()``. The loop thread's figure also counts the
``gc.collect()`` each run starts with. It reads hibachi's internals: a diagnostic,
not a contract.

Usage: python benchmarks/feedforward_hop.py [--callers N] [--runs K]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import timeit
from typing import Any

import numpy as np

import hibachi
from hibachi._bench.feedforward_overhead import _per_item, floor_per_item, identity
from hibachi._core.queue import WorkQueue
from hibachi._feedforward.loop_inbox import LoopInbox

COUNTS = {"hops": 0, "sleeps": 0}


def _count(cls: Any, name: str, key: str) -> None:
    original = getattr(cls, name)

    def counted(self: Any, *args: Any) -> Any:
        COUNTS[key] += 1
        return original(self, *args)

    setattr(cls, name, counted)


def _thread_cpu(ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


async def _hibachi(callers: int, runs: int) -> None:
    batcher = hibachi.FeedforwardBatcher(identity, max_batch_size=64, max_queue_size=callers)
    async with batcher:
        await _per_item(batcher.run, 1000)
        engine = batcher._engine._thread.ident
        assert engine is not None
        for _ in range(runs):
            COUNTS.update(hops=0, sleeps=0)
            gc.collect()
            engine_cpu, loop_cpu = _thread_cpu(engine), time.thread_time()
            cost = await _per_item(batcher.run, callers)
            engine_cpu = (_thread_cpu(engine) - engine_cpu) / callers
            loop_cpu = (time.thread_time() - loop_cpu) / callers
            wall, cpu = cost.wall * 1e6, cost.cpu * 1e6
            print(
                f"  hibachi: wall {wall:6.2f} us, cpu {cpu:6.2f} us per item; "
                f"loop thread {loop_cpu * 1e6:5.2f}, engine thread {engine_cpu * 1e6:5.2f}; "
                f"{COUNTS['hops']} hops, {COUNTS['sleeps']} engine sleeps"
            )


async def _floor(callers: int, runs: int) -> None:
    for _ in range(runs):
        cost = await floor_per_item(callers, 64)
        print(f"  floor:   wall {cost.wall * 1e6:6.2f} us, cpu {cost.cpu * 1e6:6.2f} us per item")


async def _run_split() -> None:
    batcher = hibachi.FeedforwardBatcher(identity, max_queue_size=None)
    async with batcher:
        x = np.zeros(4, np.float32)
        loop = asyncio.get_running_loop()
        n = 20_000
        handles = []

        def run() -> None:
            handles.append(batcher.run(x))

        per_run = timeit.timeit(run, number=n) / n
        per_future = timeit.timeit(loop.create_future, number=n) / n
        for handle in handles:
            await handle
    print(f"  run(): {per_run * 1e6:.2f} us = {per_run / per_future:.1f}x loop.create_future()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _count(LoopInbox, "receive", "hops")
    _count(WorkQueue, "wait", "sleeps")
    print(f"{args.callers:,} concurrent callers, identity model, batches of 64:")
    asyncio.run(_hibachi(args.callers, args.runs))
    asyncio.run(_floor(args.callers, args.runs))
    asyncio.run(_run_split())


if __name__ == "__main__":
    main()
