"""Sentence embeddings, all-MiniLM-L6-v2: hibachi's concurrent callers vs the best hand loop.

128 texts of mixed length (4-120 words). hibachi: 128 concurrent callers, each
awaiting its own embedding. The hand-written loop: texts sorted by length, in
padded batches. Both run with batches of 8 and of 32 (hibachi's
``max_batch_size``) in ``--repeat`` alternating rounds (the order turns each
round), with PyTorch on ``--threads`` threads (default: PyTorch's own choice).
Prints each one's best time, hibachi's throughput over the best loop's (issue
#15's target: at least 1.0) as the median of the rounds' ratios with the
lowest and highest, and as best-of over best-of; the load average before and
after; and the lowest cosine similarity to the embeddings computed one text at
a time. The measuring functions live in ``hibachi._bench.feedforward_embeddings``.

``--release-loop-pool``: the main thread ends its OpenMP workers before each
hibachi run (see docs/cpu-threads.md); the loop is measured as it is.

Usage: python benchmarks/minilm_embeddings.py [--texts N] [--repeat R] [--threads T]
       [--device cpu] [--release-loop-pool]
"""

from __future__ import annotations

import argparse
import os

from hibachi._bench.feedforward_embeddings import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--release-loop-pool",
        action="store_true",
        help="end the main thread's OpenMP workers before each hibachi run (docs/cpu-threads.md)",
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = compare(
        texts=args.texts,
        repeat=args.repeat,
        device=args.device,
        release_loop_pool=args.release_loop_pool,
    )
    print(
        f"all-MiniLM-L6-v2, {result.texts} texts of mixed length, {torch.get_num_threads()} "
        f"thread(s), {args.repeat} alternating rounds; load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after:"
    )
    for size, seconds in sorted(result.loop_seconds.items()):
        label = f"hand loop, sorted by length, batches of {size}"
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms (best)")
    for size, seconds in sorted(result.hibachi_seconds.items()):
        label = f"hibachi, {result.texts} callers, max_batch_size={size}"
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms (best)")
    print(
        f"hibachi throughput / best hand loop, median of the rounds [lowest-highest]: "
        f"{result.round_summary} (target >= 1.0); best-of / best-of: {result.throughput_ratio:.2f}"
    )
    print(f"lowest cosine to the embedding computed alone: {result.min_cosine:.7f}")


if __name__ == "__main__":
    main()
