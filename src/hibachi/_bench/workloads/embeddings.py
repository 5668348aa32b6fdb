"""Workload 2, embeddings: all-MiniLM-L6-v2 over texts of mixed length.

- hibachi: one concurrent caller per text, each awaiting its own embedding
  from a `FeedforwardBatcher` that pads and picks similar lengths itself;
- one model call per text (what those callers do without a batcher);
- a hand-written loop: texts sorted by length, padded batches (the best case
  for a caller who has every text up front);
- sentence-transformers' ``encode`` on the whole list.

hibachi and the loop run at each batch size asked for (`EmbeddingSize`).
Each method reports texts/s and the lowest cosine similarity to the text's
embedding computed alone (1.0 = identical). By default each method runs up to
``repeat`` times in a row and keeps its best; with ``rounds`` every method
runs once a round, the order turning each round, keeps its best, and a note
gives hibachi's throughput over the loop's round by round (each at its better
batch size in that round): a ratio measured side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..environment import release_openmp_pool
from ..methods.embed import (
    Timed,
    Unavailable,
    embed_alone,
    embed_sorted_batches,
    encode_with_sentence_transformers,
    load_sentence_transformer,
    min_cosine,
    with_hibachi,
)
from ..models.minilm import load_minilm, make_texts
from ..output.progress import Progress
from ..results import Column, Section
from ..settings import BenchSettings, EmbeddingSize
from ..timing.rounds import alternate, ratio_summary
from ..timing.runs import best_of

__all__ = ["measure"]

COLUMNS = [
    Column("texts_per_s", "texts/s", "{:,.0f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("min_cosine", "cosine vs alone", "{:.6f}"),
]
ALONE = "one call per text"
SORTED = "sorted padded batches"
ST = "sentence-transformers encode"
HIBACHI = "hibachi FeedforwardBatcher"

Run = Callable[[], Timed]


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.embeddings
    progress.begin("embeddings", 1 + _steps(size))
    progress.doing("loading all-MiniLM-L6-v2")
    minilm = load_minilm(settings.device)
    texts = make_texts(size.texts, size.words, settings.seed)
    section = Section("embeddings", _title(size), COLUMNS, settings=vars(size).copy())
    methods = _methods(minilm, texts, settings)
    if size.rounds:
        outcomes = _in_rounds(methods, size, progress, section)
    else:
        outcomes = _in_turn(methods, settings, progress)
    _record_all(section, outcomes)
    section.notes.append(
        f"speed-up: over {ALONE}. cosine vs alone: the lowest cosine similarity of a text's "
        "embedding to the one computed alone (1.000000: identical)."
    )
    return section


def _steps(size: EmbeddingSize) -> int:
    methods = 2 + 2 * len(size.batch_sizes)
    return size.rounds * methods if size.rounds else methods


def _title(size: EmbeddingSize) -> str:
    sizes = ", ".join(map(str, size.batch_sizes))
    batch = f"batch size {sizes}" if len(size.batch_sizes) == 1 else f"batch sizes {sizes}"
    return (
        f"Embeddings: all-MiniLM-L6-v2, {size.texts} texts of {size.words[0]}-{size.words[1]} "
        f"words, {batch}"
    )


def _methods(minilm: Any, texts: list[str], settings: BenchSettings) -> dict[str, Run]:
    """Every method by name, one call per text first (the reference)."""
    sizes = settings.embeddings.batch_sizes

    def named(method: str, batch: int) -> str:
        return method if len(sizes) == 1 else f"{method}, batch {batch}"

    def served(batch: int) -> Timed:
        if settings.release_loop_pool:
            release_openmp_pool()
        return with_hibachi(minilm, texts, batch)

    st_model = functools.cache(lambda: load_sentence_transformer(settings.device))
    methods: dict[str, Run] = {ALONE: lambda: embed_alone(minilm, texts)}
    for batch in sizes:
        methods[named(HIBACHI, batch)] = functools.partial(served, batch)
    for batch in sizes:
        methods[named(SORTED, batch)] = functools.partial(
            embed_sorted_batches, minilm, texts, batch
        )
    largest = max(sizes)
    methods[ST] = lambda: encode_with_sentence_transformers(st_model(), texts, largest)
    return methods


Outcomes = dict[str, Timed | BaseException]


def _in_turn(methods: dict[str, Run], settings: BenchSettings, progress: Progress) -> Outcomes:
    """Each method up to ``repeat`` times in a row (within the time budget), its best run."""
    size = settings.embeddings
    outcomes: Outcomes = {}
    for name, run in methods.items():
        progress.doing(name)
        try:
            outcomes[name] = best_of(run, _texts_per_s, size.repeat, settings.repeat_within)
        except Exception as exc:
            if name == ALONE:
                raise
            outcomes[name] = exc
    return outcomes


def _in_rounds(
    methods: dict[str, Run], size: EmbeddingSize, progress: Progress, section: Section
) -> Outcomes:
    """Every method once a round for ``rounds`` rounds, the order turning; each one's best.

    A method that fails is not run again; the note compares hibachi and the
    loop round by round.
    """
    failed: dict[str, BaseException] = {}

    def guarded(name: str) -> Timed | None:
        if name in failed:
            return None
        progress.doing(name)
        try:
            return methods[name]()
        except Exception as exc:
            if name == ALONE:
                raise
            failed[name] = exc
            return None

    runs = alternate({name: functools.partial(guarded, name) for name in methods}, size.rounds)
    outcomes: Outcomes = {}
    for name, timed in runs.items():
        done = [t for t in timed if t is not None]
        outcomes[name] = failed.get(name) or max(done, key=_texts_per_s)
    section.notes.append(_round_note(runs, size))
    return outcomes


def _round_note(runs: dict[str, list[Timed | None]], size: EmbeddingSize) -> str:
    """hibachi over the sorted loop in each round, each at its better batch size there."""

    def round_best(method: str) -> list[float] | None:
        columns = [timed for name, timed in runs.items() if name.startswith(method)]
        if any(t is None for column in columns for t in column):
            return None
        return [min(t.seconds for t in round_ if t) for round_ in zip(*columns, strict=True)]

    loop, served = round_best(SORTED), round_best(HIBACHI)
    if loop is None or served is None:
        return "hibachi / sorted padded batches by round: not measured (a method failed)"
    summary = ratio_summary(loop, served)  # seconds: the loop's over hibachi's is hibachi's rate
    return (
        f"{size.rounds} alternating rounds, each method's best shown; hibachi / sorted padded "
        f"batches, each at its better batch size in the round, median of the rounds' texts/s "
        f"ratios [lowest-highest]: {summary}"
    )


def _record_all(section: Section, outcomes: Outcomes) -> None:
    reference = outcomes[ALONE]
    assert isinstance(reference, Timed)
    for name, outcome in outcomes.items():
        if isinstance(outcome, Unavailable):
            section.skip(name, str(outcome))
        elif isinstance(outcome, BaseException):
            section.fail(name, outcome)
        else:
            _record(section, name, outcome, reference)


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
