"""Embeddings of texts up to MiniLM's 512 tokens: hibachi's callers against the sorted loop.

The comparison of ``benchmarks/minilm_embeddings.py`` (one concurrent caller
per text through a `FeedforwardBatcher` against the hand-written loop that
sorts every text by length and runs padded batches; each keeps its best batch
size), with the texts' word counts drawn from ``--words`` (by default 4 to 400
words: up to the 512 tokens the tokenizer keeps), where attention's share of a
batch's cost is largest. Prints both times per batch size and hibachi's
throughput over the best loop's.

Usage: python benchmarks/long_text_embeddings.py [--texts 64] [--words 4,400]
       [--batch-sizes 8,32] [--repeat 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio

from hibachi._bench.feedforward_embeddings import embed_sorted_batches, embed_with_hibachi
from hibachi._bench.minilm import load_minilm, make_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--words", default="4,400")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    low, high = (int(w) for w in args.words.split(","))
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    minilm = load_minilm("cpu")
    texts = make_texts(args.texts, (low, high), 0)
    loops, served = dict.fromkeys(sizes, float("inf")), dict.fromkeys(sizes, float("inf"))
    for _ in range(args.repeat):
        for size in sizes:
            loops[size] = min(loops[size], embed_sorted_batches(minilm, texts, size).seconds)
            run = asyncio.run(embed_with_hibachi(minilm, texts, size))
            served[size] = min(served[size], run.seconds)
    print(f"all-MiniLM-L6-v2, {args.texts} texts of {low}-{high} words, {args.threads} thread(s):")
    for size in sizes:
        loop, hibachi = loops[size] * 1e3, served[size] * 1e3
        print(f"  batches of {size:>3}: loop {loop:8.1f} ms, hibachi {hibachi:8.1f} ms")
    ratio = min(loops.values()) / min(served.values())
    print(f"hibachi throughput / best hand loop: {ratio:.2f}")


if __name__ == "__main__":
    main()
