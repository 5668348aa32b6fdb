"""Workload 2, embeddings: all-MiniLM-L6-v2 over texts of mixed length.

- hibachi: one concurrent caller per text, each awaiting its own embedding
  from a `FeedforwardBatcher` that pads and stacks whatever is queued;
- one model call per text (what those callers do without a batcher);
- a hand-written loop: texts sorted by length, padded batches (the best case
  for a caller who has every text up front);
- sentence-transformers' ``encode`` on the whole list.

Each reports texts/s and the lowest cosine similarity to the text's embedding
computed alone (1.0 = identical).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .minilm import INSTALL_HINT, PAD_VALUE, MiniLM, load_minilm, make_texts, model_folder
from .progress import Progress
from .results import Column, Section
from .settings import BenchSettings
from .timing import best_of

__all__ = [
    "Embedded",
    "encode_with_sentence_transformers",
    "load_sentence_transformer",
    "measure",
    "one_per_text",
    "serve_with_hibachi",
    "sorted_batches",
]

COLUMNS = [
    Column("texts_per_s", "texts/s", "{:,.0f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("min_cosine", "cosine vs alone", "{:.6f}"),
]
ALONE = "one call per text"
SORTED = "sorted padded batches"
ST = "sentence-transformers encode"
HIBACHI = "hibachi FeedforwardBatcher"


@dataclass
class Embedded:
    """One embedding per text, in order, and the wall time it took."""

    vectors: list[Any]
    seconds: float


class Unavailable(RuntimeError):
    """A method that cannot run with what is installed; the message says what to install."""


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.embeddings
    progress.begin("embeddings", 5)
    progress.doing("loading all-MiniLM-L6-v2")
    minilm = load_minilm(settings.device)
    texts = make_texts(size.texts, size.words, settings.seed)
    title = (
        f"Embeddings: all-MiniLM-L6-v2, {size.texts} texts of {size.words[0]}-{size.words[1]} "
        f"words, batch size {size.batch_size}"
    )
    section = Section("embeddings", title, COLUMNS, settings=size.__dict__.copy())

    def best(run: Callable[[], Embedded]) -> Embedded:
        return best_of(run, _texts_per_s, size.repeat, settings.repeat_within)

    progress.doing(ALONE)
    reference = best(lambda: one_per_text(minilm, texts))
    _record(section, ALONE, reference, reference)
    batch = size.batch_size
    st_model = functools.cache(lambda: load_sentence_transformer(settings.device))
    methods: list[tuple[str, Callable[[], Embedded]]] = [
        (HIBACHI, lambda: asyncio.run(serve_with_hibachi(minilm, texts, batch))),
        (SORTED, lambda: sorted_batches(minilm, texts, batch)),
        (ST, lambda: encode_with_sentence_transformers(st_model(), texts, batch)),
    ]
    for name, run in methods:
        progress.doing(name)
        try:
            _record(section, name, best(run), reference)
        except Unavailable as exc:
            section.skip(name, str(exc))
        except Exception as exc:
            section.fail(name, exc)
    return section


def _texts_per_s(result: Embedded) -> float:
    return len(result.vectors) / result.seconds


def _record(section: Section, name: str, result: Embedded, reference: Embedded) -> None:
    rate = len(result.vectors) / result.seconds
    section.add(
        name,
        texts_per_s=rate,
        speedup=rate * reference.seconds / len(reference.vectors),
        min_cosine=_min_cosine(result.vectors, reference.vectors),
        seconds=result.seconds,
    )


def _min_cosine(vectors: list[Any], reference: list[Any]) -> float:
    import torch

    a = torch.stack([torch.as_tensor(v).float().cpu() for v in vectors])
    b = torch.stack([torch.as_tensor(v).float().cpu() for v in reference])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def one_per_text(minilm: MiniLM, texts: list[str]) -> Embedded:
    """Each text through the model on its own, one after the other."""
    start = time.perf_counter()
    vectors = [minilm.alone(text) for text in texts]
    return Embedded(vectors, time.perf_counter() - start)


def sorted_batches(minilm: MiniLM, texts: list[str], batch_size: int) -> Embedded:
    """Texts sorted by length, in padded batches of ``batch_size``; results back in order."""
    start = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors: list[Any] = [None] * len(texts)
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        out = minilm(minilm.tokenize_batch([texts[j] for j in chunk]))
        for j, vector in zip(chunk, out, strict=True):
            vectors[j] = vector
    return Embedded(vectors, time.perf_counter() - start)


def load_sentence_transformer(device: str) -> Any:
    """MiniLM as a ``SentenceTransformer``, from the same local folder, warmed up."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise Unavailable(f"sentence-transformers is not installed: {INSTALL_HINT}") from exc
    model = SentenceTransformer(str(model_folder()), device=device)
    model.encode(["warm up"])
    return model


def encode_with_sentence_transformers(model: Any, texts: list[str], batch_size: int) -> Embedded:
    """sentence-transformers' ``encode`` on the whole list."""
    start = time.perf_counter()
    out = model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
    return Embedded(list(out), time.perf_counter() - start)


async def serve_with_hibachi(minilm: MiniLM, texts: list[str], batch_size: int) -> Embedded:
    """One concurrent caller per text, each tokenizing its text and awaiting its embedding."""
    import hibachi

    batcher_type = getattr(hibachi, "FeedforwardBatcher", None)
    if batcher_type is None:
        raise Unavailable("hibachi.FeedforwardBatcher is not in this version of hibachi")
    batcher = batcher_type(minilm, max_batch_size=batch_size, pad_value=PAD_VALUE)
    async with batcher:

        async def caller(text: str) -> Any:
            return await batcher.run(minilm.tokenize(text))

        await caller(texts[0])  # the engine thread's first model call pays one-off set-up
        start = time.perf_counter()
        vectors = await asyncio.gather(*(caller(t) for t in texts))
        seconds = time.perf_counter() - start
    return Embedded(list(vectors), seconds)
