"""Sentence embeddings, all-MiniLM-L6-v2: hibachi's concurrent callers vs the best hand loop.

128 texts of mixed length (4-120 words). hibachi: 128 concurrent callers, each
awaiting its own embedding. The hand-written loop: texts sorted by length, in
padded batches. Both run with batches of 8 and of 32 (hibachi's
``max_batch_size``), and each one's better time counts. Prints the times, the
throughput ratio (target: hibachi at least 0.85 of the best loop) and the
lowest cosine similarity to the embeddings computed one text at a time.
The measuring functions live in ``hibachi._bench.feedforward_embeddings``.

Usage: python benchmarks/minilm_embeddings.py [--texts N] [--repeat R] [--device cpu]
"""

from __future__ import annotations

import argparse

from hibachi._bench.feedforward_embeddings import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = compare(texts=args.texts, repeat=args.repeat, device=args.device)
    print(f"all-MiniLM-L6-v2, {result.texts} texts of mixed length (best of {args.repeat}):")
    for size, seconds in sorted(result.loop_seconds.items()):
        label = f"hand loop, sorted by length, batches of {size}"
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms")
    for size, seconds in sorted(result.hibachi_seconds.items()):
        label = f"hibachi, {result.texts} callers, max_batch_size={size}"
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms")
    print(f"hibachi throughput / best hand loop: {result.throughput_ratio:.2f} (target >= 0.85)")
    print(f"lowest cosine to the embedding computed alone: {result.min_cosine:.7f}")


if __name__ == "__main__":
    main()
