"""What continuous batching costs, next to the floor asyncio itself sets.

Prints, in one run:

1. Cost per delivered token with 64 rows at S=16 and S=4096 (a model that reads
   only the last column), next to asyncio alone waking 64 consumer tasks once
   per step (the floor). Targets: <= 2x the floor, flat in S.
2. Throughput of 16 concurrent requests against the same requests run one at a
   time, through a NumPy model that costs about 1 ms per call. Target: >= 12x.

Usage: python benchmarks/autoregressive_overhead.py [--steps N] [--repeat R]
"""

from __future__ import annotations

import os

# One BLAS thread: the "1 ms model" must cost the same alone and batched, and
# spinning BLAS workers would fight hibachi's threads for this machine's cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import hibachi  # noqa: E402
from hibachi._bench.methods.per_token import autoregressive_per_token, floor_per_token  # noqa: E402
from hibachi._bench.settings import OverheadSize  # noqa: E402

ROWS = 64


def overhead_size(steps: int) -> OverheadSize:
    return OverheadSize(rows=ROWS, steps=steps, callers=0, batch_size=0, repeat=1)


def one_ms_model(dim: int = 256) -> Callable[[Any, Any], Any]:
    """A NumPy model costing about 1 ms per call, almost whatever the batch size."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)
    state = rng.standard_normal((dim, dim)).astype(np.float32)
    reps = _calibrate(weights, state)

    def model(tokens: Any, mask: Any) -> Any:
        x = state
        for _ in range(reps):
            x = np.tanh(x @ weights)
        return (tokens[:, -1] * 7 + int(x[0, 0] > 0) + 3) % 50_000 + 3

    return model


def model_cost(model: Callable[[Any, Any], Any], calls: int = 200) -> float:
    """Seconds per call of ``model`` on a batch of one, called directly."""
    tokens, mask = np.ones((1, 8), dtype=np.int64), np.ones((1, 8), dtype=bool)
    start = time.perf_counter()
    for _ in range(calls):
        model(tokens, mask)
    return (time.perf_counter() - start) / calls


def _calibrate(weights: np.ndarray[Any, Any], state: np.ndarray[Any, Any]) -> int:
    start = time.perf_counter()
    for _ in range(20):
        np.tanh(state @ weights)
    per_rep = (time.perf_counter() - start) / 20
    return max(1, round(0.001 / per_rep))


async def throughput(
    model: Callable[[Any, Any], Any], concurrent: bool, requests: int = 16, tokens: int = 64
) -> float:
    """Tokens per second for ``requests`` requests, together or one at a time."""
    batcher = hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(0), pad_value=np.int64(0), max_batch_size=requests
    )
    prompts = [np.arange(1, 5 + i, dtype=np.int64) for i in range(requests)]
    async with batcher:

        async def one(prompt: np.ndarray[Any, Any]) -> int:
            return len(await batcher.run(prompt, max_new_tokens=tokens).collect())

        start = time.perf_counter()
        if concurrent:
            counts = await asyncio.gather(*(one(p) for p in prompts))
        else:
            counts = [await one(p) for p in prompts]
        elapsed = time.perf_counter() - start
    return sum(counts) / elapsed


async def main(steps: int, repeat: int) -> None:
    def best(values: list[float]) -> float:
        return min(values)

    size = overhead_size(steps)
    floor = best([await floor_per_token(size) for _ in range(repeat)])
    short = best([await autoregressive_per_token(size, 16) for _ in range(repeat)])
    long = best([await autoregressive_per_token(size, 4096) for _ in range(repeat)])
    print(f"cost per delivered token, {ROWS} rows, {steps} steps (best of {repeat}):")
    print(f"  asyncio floor (wake {ROWS} tasks/step): {floor * 1e6:7.2f} us")
    for label, cost in (("S=16", short), ("S=4096", long)):
        print(f"  hibachi, {label:<28} {cost * 1e6:7.2f} us  ({cost / floor:.2f}x)")
    model = one_ms_model()
    cost = model_cost(model)
    together = max([await throughput(model, True) for _ in range(repeat)])
    alone = max([await throughput(model, False) for _ in range(repeat)])
    print(f"throughput, 16 requests x 64 tokens, NumPy model of {cost * 1e3:.2f} ms per call:")
    print(f"  the model alone, called in a loop: {1 / cost:9.0f} calls/s")
    print(f"  one at a time: {alone:9.0f} tokens/s")
    print(f"  concurrent:    {together:9.0f} tokens/s  ({together / alone:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.repeat))
