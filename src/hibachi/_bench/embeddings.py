"""Workload 2, embeddings: all-MiniLM-L6-v2 over texts of mixed length.

- hibachi: one concurrent caller per text, each awaiting its own embedding
  from a `FeedforwardBatcher` that pads and picks similar lengths itself;
- one model call per text (what those callers do without a batcher);
- a hand-written loop: texts sorted by length, padded batches (the best case
  for a caller who has every text up front);
- sentence-transformers' ``encode`` on the whole list.

The first three are `feedforward_embeddings`' measuring functions. Each
method reports texts/s and the lowest cosine similarity to the text's
embedding computed alone (1.0 = identical).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from .feedforward_embeddings import (
    Timed,
    embed_alone,
    embed_sorted_batches,
    embed_with_hibachi,
    min_cosine,
)
from .minilm import INSTALL_HINT, MiniLM, load_minilm, make_texts, model_folder
from .progress import Progress
from .results import Column, Section
from .settings import BenchSettings
from .timing import best_of, run_async

__all__ = [
    "Unavailable",
    "encode_with_sentence_transformers",
    "feedforward_batcher",
    "load_sentence_transformer",
    "measure",
    "with_hibachi",
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
    section = Section("embeddings", title, COLUMNS, settings=vars(size).copy())

    def best(run: Callable[[], Timed]) -> Timed:
        return best_of(run, _texts_per_s, size.repeat, settings.repeat_within)

    progress.doing(ALONE)
    reference = best(lambda: embed_alone(minilm, texts))
    _record(section, ALONE, reference, reference)
    batch = size.batch_size
    st_model = functools.cache(lambda: load_sentence_transformer(settings.device))
    methods: list[tuple[str, Callable[[], Timed]]] = [
        (HIBACHI, lambda: with_hibachi(minilm, texts, batch)),
        (SORTED, lambda: embed_sorted_batches(minilm, texts, batch)),
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


def _texts_per_s(result: Timed) -> float:
    return len(result.vectors) / result.seconds


def _record(section: Section, name: str, result: Timed, reference: Timed) -> None:
    rate = _texts_per_s(result)
    section.add(
        name,
        texts_per_s=rate,
        speedup=rate / _texts_per_s(reference),
        min_cosine=min_cosine(result.vectors, reference.vectors),
        seconds=result.seconds,
    )


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
