"""The embeddings workload's ways to embed a list of texts with all-MiniLM-L6-v2.

- one model call per text (what callers do without a batcher; the reference
  embeddings);
- hibachi: one concurrent caller per text, each tokenizing its own text and
  awaiting its embedding from a `FeedforwardBatcher` that pads (and picks
  similar lengths) on its own;
- the hand-written loop: every text up front, sorted by length, tokenized and
  run in padded batches (the best case for a caller who has every text);
- sentence-transformers' ``encode`` on the whole list.

Each is timed from the raw texts to every embedding, tokenization included,
and returns a `Timed`. The model and texts come from `models.minilm`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models.minilm import INSTALL_HINT, PAD_VALUE, MiniLM, model_folder
from ..timing.runs import run_async

__all__ = [
    "Timed",
    "Unavailable",
    "embed_alone",
    "embed_sorted_batches",
    "embed_with_hibachi",
    "encode_with_sentence_transformers",
    "feedforward_batcher",
    "load_sentence_transformer",
    "min_cosine",
    "with_hibachi",
]


class Unavailable(RuntimeError):
    """A method that cannot run with what is installed; the message says what to install."""


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


def feedforward_batcher() -> Any:
    """``hibachi.FeedforwardBatcher``, or `Unavailable` when this hibachi has none."""
    import hibachi

    batcher_type = getattr(hibachi, "FeedforwardBatcher", None)
    if batcher_type is None:
        raise Unavailable("hibachi.FeedforwardBatcher is not in this version of hibachi")
    return batcher_type


def with_hibachi(minilm: MiniLM, texts: list[str], batch_size: int) -> Timed:
    """`embed_with_hibachi`, or `Unavailable` when this hibachi has no `FeedforwardBatcher`."""
    feedforward_batcher()
    return run_async(embed_with_hibachi(minilm, texts, batch_size))


def load_sentence_transformer(device: str) -> Any:
    """MiniLM as a ``SentenceTransformer``, from the same local folder, warmed up."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise Unavailable(f"sentence-transformers is not installed: {INSTALL_HINT}") from exc
    model = SentenceTransformer(str(model_folder()), device=device)
    model.encode(["warm up"])
    return model


def encode_with_sentence_transformers(model: Any, texts: list[str], batch_size: int) -> Timed:
    """sentence-transformers' ``encode`` on the whole list."""
    start = time.perf_counter()
    out = model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
    return Timed(list(out), time.perf_counter() - start)
