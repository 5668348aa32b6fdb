"""The batch picker against a fake model that costs what MiniLM was measured to cost.

Each round, a queue of token lengths waits all at once and is drained by
`pick_counts` with a `CostModel` that learns online from the batches it ran,
as the core does; the model's cost is ``a + b·B·L + c·B·L²`` seconds with the
terms `benchmarks/batch_cost_fit.py` fitted for all-MiniLM-L6-v2 on two CPU
threads (times 1 ± 5% noise when the cost model learns them), extrapolated
past 512 tokens for the longer workloads. Prints the modelled seconds of the
second half of the rounds, the batches it took and the terms learnt. No model
runs, so the figures are deterministic: run it with another checkout's
``src`` on ``PYTHONPATH`` to compare cost models.

Usage: python benchmarks/cost_model_replay.py [--rounds 8] [--sizes 8,32]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from hibachi._feedforward.cost_model import CostModel
from hibachi._feedforward.length_picking import pick_counts

MINILM = (0.0124, 0.000147, 1.01e-7)  # a, b, c on 2 threads (batch_cost_fit.py, 12:27 UTC)
Lengths = Callable[[np.random.Generator], list[int]]


def seconds(items: int, length: int) -> float:
    a, b, c = MINILM
    return a + b * items * length + c * items * length * length


def drain(
    lengths: list[int], size: int, model: CostModel, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Batch the queue ``lengths`` (oldest first) as the core would: each batch's items
    and padded length."""
    waiting, batches = list(lengths), list[tuple[int, int]]()
    while waiting:
        distinct = sorted(set(waiting))
        counts = [waiting.count(n) for n in distinct]
        take = pick_counts(distinct, counts, distinct.index(waiting[0]), size, None, model)
        batch = [n for n, t in zip(distinct, take, strict=True) for _ in range(t)]
        noise = 1 + 0.05 * rng.standard_normal()
        model.observe(len(batch), max(batch), seconds(len(batch), max(batch)) * noise)
        batches.append((len(batch), max(batch)))
        for n in batch:
            waiting.remove(n)
    return batches


def mix(short: int, long: tuple[int, int], count: int) -> Lengths:
    """``short`` items of 8-40 tokens and ``count`` of ``long``, shuffled."""

    def lengths(rng: np.random.Generator) -> list[int]:
        drawn = [*rng.integers(8, 41, short), *rng.integers(long[0], long[1] + 1, count)]
        rng.shuffle(drawn)
        return [int(n) for n in drawn]

    return lengths


WORKLOADS: dict[str, Lengths] = {
    "56 of 8-40 + 8 of 200-512": mix(56, (200, 512), 8),
    "56 of 8-40 + 8 of 1000-2048": mix(56, (1000, 2048), 8),
    "62 of 8-40 + 2 of 1500-2048": mix(62, (1500, 2048), 2),
    "64 of 8-160": mix(0, (8, 160), 64),
    "64 of 8-512": mix(0, (8, 512), 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sizes", default="8,32")
    args = parser.parse_args()
    for name, lengths in WORKLOADS.items():
        for size in [int(s) for s in args.sizes.split(",")]:
            model, total, calls = CostModel(), 0.0, 0
            queues, noise = np.random.default_rng(0), np.random.default_rng(1)  # the same queues
            for round_ in range(args.rounds):  # whatever the batches taken
                batches = drain(lengths(queues), size, model, noise)
                if round_ >= args.rounds // 2:
                    total += sum(seconds(items, length) for items, length in batches)
                    calls += len(batches)
            terms = f"a={model.fixed * 1e3:.1f} ms, b={model.per_cell * 1e6:.0f} µs"
            c = getattr(model, "per_cell_length", 0.0)  # absent before the attention term
            print(f"{name:<28} size {size:>2}: {total:8.3f} s modelled, {calls:>3} batches; "
                  f"learnt {terms}, c={c * 1e9:.0f} ns")  # fmt: skip


if __name__ == "__main__":
    main()
