"""What a padded MiniLM batch costs, fitted linear and with an attention term.

Times all-MiniLM-L6-v2 on padded batches over a grid of ``B`` items and ``L``
tokens (every token real: a padded batch computes on every position), the
median of ``--repeat`` calls per point with the grid shuffled on every pass,
then fits, by non-negative least squares over the seconds,

    linear     t ≈ a + b·B·L
    quadratic  t ≈ a + b·B·L + c·B·L²

and prints each fit's terms and residuals (relative to the time measured), the
share of the ``c`` term in a batch's time at each ``L``, and how far each fit's
prediction is from the time measured at each point. It answers whether the
batcher's cost model (`CostModel`) needs the ``B·L²`` term for this model.

Usage: python benchmarks/batch_cost_fit.py [--threads 1,2] [--batches 1,2,4,8,16,32]
       [--lengths 8,16,32,64,128,256,384,512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from typing import Any

import numpy as np

from hibachi._bench.models.minilm import load_minilm

Point = tuple[int, int, float]  # items, padded length, seconds


def time_grid(minilm: Any, batches: list[int], lengths: list[int], repeat: int) -> list[Point]:
    """The median seconds of a forward at every (B, L), passes over the grid shuffled."""
    import torch

    ids = torch.randint(1000, 20000, (max(batches), max(lengths)))
    minilm({"input_ids": ids, "attention_mask": torch.ones_like(ids)})  # warm up
    grid = list(itertools.product(batches, lengths))
    seen: dict[tuple[int, int], list[float]] = {point: [] for point in grid}
    order = random.Random(0)
    for _ in range(repeat):
        order.shuffle(grid)
        for items, length in grid:
            ids = torch.randint(1000, 20000, (items, length))
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            start = time.perf_counter()
            minilm(batch)
            seen[items, length].append(time.perf_counter() - start)
    return [(b, n, statistics.median(seen[b, n])) for b, n in sorted(seen)]


def nnls(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best over the sets of free terms."""
    scale = np.abs(features).max(axis=0)
    scaled = features / scale
    best, best_error = np.zeros(features.shape[1]), float(np.sum(seconds**2))
    for size in range(1, features.shape[1] + 1):
        for free in itertools.combinations(range(features.shape[1]), size):
            cols = list(free)
            found, *_ = np.linalg.lstsq(scaled[:, cols], seconds, rcond=None)
            if np.any(found < 0):
                continue
            error = float(np.sum((scaled[:, cols] @ found - seconds) ** 2))
            if error < best_error:
                best, best_error = np.zeros(features.shape[1]), error
                best[cols] = found
    return np.asarray(best / scale)


def features(points: list[Point], quadratic: bool) -> np.ndarray:
    rows = [[1.0, b * n] + ([b * n * n] if quadratic else []) for b, n, _ in points]
    return np.array(rows, dtype=float)


def fit(points: list[Point], quadratic: bool, relative: bool) -> np.ndarray:
    """The terms that minimise the squared error in seconds, or relative to each time."""
    seconds = np.array([t for *_, t in points])
    weight = 1 / seconds if relative else np.ones_like(seconds)
    return nnls(features(points, quadratic) * weight[:, None], seconds * weight)


def report(points: list[Point], lengths: list[int], batches: list[int], relative: bool) -> None:
    seconds = np.array([t for *_, t in points])
    fits = {name: fit(points, name == "quadratic", relative) for name in ("linear", "quadratic")}
    for name, terms in fits.items():
        predicted = features(points, name == "quadratic") @ terms
        error = (predicted - seconds) / seconds
        named = ", ".join(f"{k}={v:.3g}" for k, v in zip("abc", terms, strict=False))
        rms = np.sqrt(np.mean((predicted - seconds) ** 2)) * 1e3
        print(f"  {name:>9}: {named}; residual rms {rms:.2f} ms,", end="")
        print(f" relative rms {np.sqrt(np.mean(error**2)):.1%}, worst {np.max(np.abs(error)):.1%}")
    a, b, c = fits["quadratic"]
    print("  share of c·B·L² in a batch's time (quadratic fit), B=1 / B=8 / B=32 / per cell:")
    for n in lengths:
        shares = [c * m * n * n / (a + b * m * n + c * m * n * n) for m in (1, 8, 32)]
        per_cell = c * n / (b + c * n) if b + c * n > 0 else 0.0
        print(f"    L={n:>4}: " + " / ".join(f"{s:5.1%}" for s in [*shares, per_cell]))
    print("  (predicted - measured) / measured, linear | quadratic:")
    print("    " + " " * 6 + "".join(f"{f'B={m}':>16}" for m in batches))
    measured = {(b, n): t for b, n, t in points}
    for n in lengths:
        cells = []
        for m in batches:
            t = measured[m, n]
            lin = (fits["linear"] @ [1, m * n]) / t - 1
            quad = (fits["quadratic"] @ [1, m * n, m * n * n]) / t - 1
            cells.append(f"{lin:+6.0%} |{quad:+6.0%}")
        print(f"    L={n:>4}" + "".join(f"{cell:>16}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--lengths", default="8,16,32,64,128,256,384,512")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    minilm = load_minilm("cpu")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        points = time_grid(minilm, batches, lengths, args.repeat)
        print(f"all-MiniLM-L6-v2, {threads} torch thread(s), median of {args.repeat}:")
        print("  seconds measured:", ", ".join(f"{b}x{n}={t * 1e3:.1f}ms" for b, n, t in points))
        for relative in (False, True):
            how = "relative to each time (as CostModel fits)" if relative else "in seconds"
            print(f" least squares {how}:")
            report(points, lengths, batches, relative)


if __name__ == "__main__":
    main()
