"""A/B of ``FeedforwardBatcher(stack_ahead=)``: items/s with each batch stacked just before
its model call, and with the next batch stacked on a helper thread meanwhile.

A workload where stacking costs something beside the model: ``--callers``
closed-loop asyncio callers, each sending ``--per-caller`` images of
3x224x224 float32 (torch tensors) to a small conv net, ``max_batch_size=32``.
Stacking a batch of 32 costs a few ms, about half the model's call.
``stack_ahead=False`` and ``stack_ahead=True`` alternate ``--repeat`` times in this
one run; printed: each run's items/s, mean batch, cores used (process CPU
time over wall time) and stacking time per batch, then the median of the
per-pair ratios. Results are checked equal to the model's on each image alone.

Usage: python benchmarks/stack_ahead.py [--repeat 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch

import hibachi


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()


async def serve(
    model: torch.nn.Module, images: list[torch.Tensor], per: int, stack_ahead: bool
) -> tuple[float, float, float, float, list[Any]]:
    async with hibachi.FeedforwardBatcher(
        model, max_batch_size=32, stack_ahead=stack_ahead
    ) as batcher:
        results: list[Any] = [None] * len(images)

        async def caller(i: int) -> None:
            for _ in range(per):
                results[i] = await batcher.run(images[i])

        await caller(0)  # warm: the first batch teaches the batcher its stacking time
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller(i) for i in range(len(images))))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        stats = batcher.stats()
        stacking = max(batcher._core.stacking.values())
    rate = len(images) * per / wall
    return rate, stats.mean_batch_size, cpu / wall, stacking * 1e3, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--per-caller", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    images = [torch.randn(3, 224, 224) for _ in range(args.callers)]
    with torch.inference_mode():
        alone = [model(image[None])[0] for image in images]
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for stack_ahead in (False, True):
            rate, batch, cores, stack_ms, results = asyncio.run(
                serve(model, images, args.per_caller, stack_ahead)
            )
            pairs = zip(results, alone, strict=True)
            assert all(torch.allclose(got, want, atol=1e-5) for got, want in pairs), (
                "a result differs from the model's on its image alone"
            )
            rates[stack_ahead].append(rate)
            print(
                f"stack_ahead={stack_ahead!s:5} {rate:8.0f} items/s  mean batch {batch:5.1f}  "
                f"cores {cores:4.2f}  stacking {stack_ms:5.1f} ms"
            )
    ratios = [on / off for on, off in zip(rates[True], rates[False], strict=True)]
    print(
        f"median items/s: off {statistics.median(rates[False]):.0f}, "
        f"on {statistics.median(rates[True]):.0f}; on/off per pair "
        f"{' '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
