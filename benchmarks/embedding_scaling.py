"""Embeddings by concurrent callers: hibachi against one model call per text, in one run.

The scaling workload of ``hibachi bench`` (all-MiniLM-L6-v2, texts of 4-120
words, each of ``c`` callers embedding ``--per-client`` texts one after the
other, ``max_batch_size`` 32) at each concurrency, next to one call per text,
with PyTorch on ``--threads`` threads. Prints texts/s and hibachi's ratio to one
call per text on the same texts (target: never below 1.0, aim 1.2) at each concurrency. Each
figure is the best of ``--repeat``; the methods are interleaved.

Usage: python benchmarks/embedding_scaling.py [--threads 1] [--concurrency 1,2,4,8,16,32,64]
       [--per-client 4] [--repeat 2]
"""

from __future__ import annotations

import argparse

from hibachi._bench.feedforward_embeddings import embed_alone
from hibachi._bench.minilm import load_minilm, make_texts
from hibachi._bench.scaling import embedding_curve
from hibachi._bench.timing import run_async


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.concurrency.split(",")]
    minilm = load_minilm("cpu")
    texts = make_texts(max(counts) * args.per_client, (4, 120), 0)
    alone, served = dict.fromkeys(counts, 0.0), dict.fromkeys(counts, 0.0)
    for _ in range(args.repeat):
        for c in counts:
            mine = texts[: c * args.per_client]
            timed = embed_alone(minilm, mine)
            alone[c] = max(alone[c], len(mine) / timed.seconds)
            rate = run_async(embedding_curve(minilm, mine, c, args.batch_size))
            served[c] = max(served[c], rate)
    print(f"texts/s, all-MiniLM-L6-v2, {args.threads} thread(s), best of {args.repeat}:")
    print(f"  {'callers':>7} {'one call per text':>18} {'hibachi':>8} {'ratio':>6}")
    for c in counts:
        print(f"  {c:>7} {alone[c]:18.1f} {served[c]:8.1f} {served[c] / alone[c]:5.2f}x")


if __name__ == "__main__":
    main()
