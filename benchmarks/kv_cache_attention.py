"""A decode step's attention in one layer of SmolLM2: lanes read through a view, or blocks gathered.

SmolLM2-135M's attention layer (9 query heads, 3 key/value heads of 64, the
way transformers' ``sdpa`` calls it for a decode step: query heads packed per
key/value head) over ``rows`` rows of ``context`` tokens each, float32, one
thread. Three ways to hand it the keys and values:

- ``lanes``: each row's tokens in a lane of its own, the rows' lanes a run:
  a view of the cache, no copy (what hibachi's cache does);
- ``lanes, 2 runs``: the same rows in two runs of lanes (a gap between them):
  one attention call per run (what hibachi does when lanes are missing);
- ``blocks``: a pool of 16-token blocks, each row's blocks in a block table,
  gathered per step into one contiguous tensor (``index_select`` into a kept
  buffer) before the same attention call (a block table read with a gather,
  as transformers' continuous batching does on the CPU).

Each variant runs ``--calls`` calls per round, alternating in ``--rounds``
rounds; the figures are the median µs per call and the spread (min-max over
the median) across rounds.

Usage: python benchmarks/kv_cache_attention.py [--rounds 7] [--calls 20] [--results]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kv_cache_common import Results, median, spread

HEADS, KV_HEADS, DIM, BLOCK = 9, 3, 64, 16


class _Layer(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True


def variants(rows: int, context: int) -> dict[str, Callable[[], Any]]:
    layer = _Layer()
    lanes = max(rows * 2, 64)
    columns = max(context, 2048)
    keys, values = (torch.randn(lanes, KV_HEADS, columns, DIM) for _ in range(2))
    query = torch.randn(rows, HEADS, 1, DIM)
    mask = torch.zeros(rows, 1, 1, context)
    half = rows // 2
    blocks = -(-context // BLOCK)
    pool_k, pool_v = (torch.randn(rows * blocks + 64, BLOCK, KV_HEADS, DIM) for _ in range(2))
    table = torch.randperm(pool_k.shape[0])[: rows * blocks]
    kept_k, kept_v = (torch.empty(rows * blocks, BLOCK, KV_HEADS, DIM) for _ in range(2))

    def lanes_view() -> Any:
        k, v = keys[:rows, :, :context], values[:rows, :, :context]
        return sdpa_attention_forward(layer, query, k, v, mask)

    def two_runs() -> Any:
        parts = []
        for start, stop, lane in ((0, half, 0), (half, rows, half + 1)):
            k = keys[lane : lane + stop - start, :, :context]
            v = values[lane : lane + stop - start, :, :context]
            parts.append(sdpa_attention_forward(layer, query[start:stop], k, v, mask[start:stop]))
        return torch.cat([part[0] for part in parts])

    def gathered() -> Any:
        torch.index_select(pool_k, 0, table, out=kept_k)
        torch.index_select(pool_v, 0, table, out=kept_v)
        shape = (rows, blocks * BLOCK, KV_HEADS, DIM)
        k = kept_k.view(shape).transpose(1, 2)[:, :, :context]
        v = kept_v.view(shape).transpose(1, 2)[:, :, :context]
        return sdpa_attention_forward(layer, query, k, v, mask)

    chosen = {"lanes": lanes_view, "lanes, 2 runs": two_runs, "blocks": gathered}
    if rows < 2:
        del chosen["lanes, 2 runs"]
    return chosen


def measure(rows: int, context: int, rounds: int, calls: int) -> dict[str, list[float]]:
    runs = variants(rows, context)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = Results(
        "Decode attention over lanes and over gathered blocks (SmolLM2-135M, one layer)",
        (__doc__ or "").split("Usage:")[0].split("\n", 2)[2].strip(),
    )
    table = []
    for rows in (1, 16, 32):
        for context in (128, 512, 2048):
            times = measure(rows, context, args.rounds, args.calls)
            base = median(times["lanes"])
            for name, values in times.items():
                table.append(
                    [
                        rows,
                        context,
                        name,
                        f"{median(values):.0f}",
                        spread(values),
                        f"{median(values) / base:.2f}x",
                    ]
                )
    results.table(
        "µs per decode attention call, one layer",
        ["rows", "context", "keys and values", "µs (median)", "spread", "vs lanes"],
        table,
        note=f"{args.rounds} rounds of {args.calls} calls, one torch thread.",
    )
    if args.results:
        results.write("kv_cache_attention")


if __name__ == "__main__":
    main()
