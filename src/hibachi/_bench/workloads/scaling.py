"""Workload 4, scaling: throughput against the number of concurrent clients.

Generation: ``c`` clients each stream one request (the same budget; the same
prompt length on the random Llama, chat prompts on a real model) through
hibachi, next to ``generate()`` on one padded batch of the same ``c``
requests (the limit), ``generate()`` one request at a time (a flat
line: it does not depend on ``c``) and transformers' ``generate_batch``;
hibachi's and ``generate_batch``'s batches hold up to the largest ``c``.
Embeddings: ``c`` callers each embed ``texts_per_client`` texts (more at low
concurrency: `ScalingSize.texts_at`) one after the other through hibachi
(batches of the embeddings workload's size), next to one model call per text
on the same texts (and, with ``worker_reference``, the same calls each awaited
on one worker thread, as an async server without a batcher must run them);
the methods alternate for ``rounds`` rounds and each figure is the median of
its rounds, with hibachi's ratio per round summed up in a note. With
``release_loop_pool``, the main thread ends its OpenMP workers before each
run on another thread (`environment.openmp`).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Coroutine
from typing import Any

from ..environment import release_openmp_pool
from ..methods import generate
from ..methods.embed import Unavailable, embed_alone, feedforward_batcher
from ..methods.embed_callers import alone_on_worker_curve, embedding_curve
from ..methods.streams import hibachi_label, with_hibachi
from ..models.language import generation_model
from ..models.minilm import MiniLM, load_minilm, make_texts
from ..models.requests import LlmRequest
from ..output.progress import Progress
from ..results import Column, Section, Series
from ..settings import BenchSettings, ScalingSize
from ..timing.rounds import alternate, ratio_summary
from ..timing.runs import best_of, run_async
from .embeddings import ALONE
from .generation import CONTINUOUS, GENERATE, LIMIT

__all__ = ["measure"]

TOKENS = "tokens/s"
TEXTS = "texts/s"
HIBACHI = "hibachi"
WORKER = "one call per text, on a worker thread"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    counts = list(settings.concurrency)
    progress.begin("scaling", 2 + 4 * len(counts))
    columns = [Column(f"c{c}", str(c), "{:,.0f}") for c in counts]
    title = "Scaling: tokens/s (generation) and texts/s (embeddings) by concurrent clients"
    section = Section("scaling", title, columns, settings={"concurrency": counts})
    for name, run in (("generation", _generation_series), ("embeddings", _embedding_series)):
        try:
            section.series += run(settings, progress, section)
        except Exception as exc:
            section.fail(name, exc)
    for series in section.series:
        values = {f"c{x}": y for x, y in zip(series.x, series.y, strict=True)}
        section.add(f"{series.panel}: {series.label}", **values)
    return section


def _generation_series(
    settings: BenchSettings, progress: Progress, section: Section
) -> list[Series]:
    progress.doing("generation: loading the model")
    served = generation_model(settings.generation, settings.device, settings.seed)
    model, counts, device = served.model, list(settings.concurrency), settings.device

    def requests(c: int) -> list[LlmRequest]:
        scale = settings.scaling
        length, budget = scale.prompt_length, scale.budget
        return served.requests(c, (length, length), (budget, budget), settings.seed)

    def hibachi_rate(c: int) -> float:
        return with_hibachi(model, requests(c), max(counts), device).tokens_per_s

    def one_batch_rate(c: int) -> float:
        return generate.one_batch(model, requests(c), device).tokens_per_s

    def alone_rate() -> float:
        return generate.one_at_a_time(model, requests(4), device).tokens_per_s

    def continuous_rate(c: int) -> float:
        return generate.continuous_batching(model, requests(c), max(counts)).tokens_per_s

    hibachi = _curve(settings, progress, "generation", hibachi_rate)
    one_batch = _curve(settings, progress, "generate() on a batch", one_batch_rate)
    alone = _best(settings, alone_rate)
    series = [
        Series("generation", hibachi_label(), TOKENS, counts, hibachi),
        Series("generation", LIMIT, TOKENS, counts, one_batch),
        Series("generation", GENERATE, TOKENS, counts, [alone] * len(counts), True),
    ]
    try:
        continuous = _curve(settings, progress, "generate_batch", continuous_rate)
    except Exception as exc:
        section.notes.append(f"{CONTINUOUS} skipped: {exc}")
    else:
        series.append(Series("generation", CONTINUOUS, TOKENS, counts, continuous))
    return series


def _curve(
    settings: BenchSettings, progress: Progress, what: str, rate: Callable[[int], float]
) -> list[float]:
    """The best ``rate(c)`` at each concurrency ``c``."""
    curve = []
    for c in settings.concurrency:
        progress.doing(f"{what}, {c} clients")
        curve.append(_best(settings, functools.partial(rate, c)))
    return curve


def _best(settings: BenchSettings, rate: Callable[[], float]) -> float:
    return best_of(rate, float, settings.scaling.repeat, settings.repeat_within)


def _embedding_series(
    settings: BenchSettings, progress: Progress, section: Section
) -> list[Series]:
    progress.doing("embeddings: loading all-MiniLM-L6-v2")
    minilm = load_minilm(settings.device)
    counts, scale = list(settings.concurrency), settings.scaling
    most = max(scale.texts_at(c) for c in counts)
    texts = make_texts(most, settings.embeddings.words, settings.seed)
    try:
        feedforward_batcher()
        served = True
    except Unavailable as exc:
        section.notes.append(f"embeddings through hibachi skipped: {exc}")
        served = False

    def rates(c: int) -> dict[str, list[float]]:
        # One call per text on the very texts hibachi embeds at each concurrency: their
        # lengths differ from one concurrency to the next, so one flat rate would not do.
        mine = texts[: scale.texts_at(c)]
        methods: dict[str, Callable[[], float]] = {
            ALONE: functools.partial(_alone_rate, minilm, mine)
        }
        if served:
            batch = settings.embeddings.batch_size
            methods[HIBACHI] = _off_main(settings, lambda: embedding_curve(minilm, mine, c, batch))
        if scale.worker_reference:
            methods[WORKER] = _off_main(settings, lambda: alone_on_worker_curve(minilm, mine, c))
        progress.doing(f"embeddings, {c} clients: {len(mine)} texts, {scale.rounds} rounds")
        return alternate(methods, scale.rounds)

    figures = {c: rates(c) for c in counts}

    def median_curve(method: str) -> Series:
        curve = [statistics.median(figures[c][method]) for c in counts]
        return Series("embeddings", method, TEXTS, counts, curve)

    series = [median_curve(ALONE)]
    if scale.worker_reference:
        series.append(median_curve(WORKER))
    if not served:
        return series
    section.notes.append(_ratio_note(counts, figures, scale))
    return [median_curve(HIBACHI), *series]


def _off_main(
    settings: BenchSettings, curve: Callable[[], Coroutine[Any, Any, float]]
) -> Callable[[], float]:
    """``curve`` run to its end, after the main thread's OpenMP workers end if asked."""

    def measured() -> float:
        if settings.release_loop_pool:
            release_openmp_pool()
        return run_async(curve())

    return measured


def _alone_rate(minilm: MiniLM, texts: list[str]) -> float:
    alone = embed_alone(minilm, texts)
    return len(alone.vectors) / alone.seconds


def _ratio_note(
    counts: list[int], figures: dict[int, dict[str, list[float]]], scale: ScalingSize
) -> str:
    """hibachi / one call per text at each concurrency: median of the rounds' ratios, spread."""
    ratios = ", ".join(
        f"{c}: {ratio_summary(figures[c][HIBACHI], figures[c][ALONE])}" for c in counts
    )
    texts = ", ".join(f"{c}: {scale.texts_at(c)}" for c in counts)
    note = (
        f"embeddings: texts/s are medians of {scale.rounds} rounds in which hibachi and one "
        f"call per text alternate; hibachi / one call per text by clients, median of the "
        f"rounds' ratios [lowest-highest]: {ratios}; texts in all by clients: {texts}"
    )
    if scale.worker_reference:
        worker = ", ".join(
            f"{c}: {ratio_summary(figures[c][HIBACHI], figures[c][WORKER])}" for c in counts
        )
        note += f"; hibachi / one call per text on a worker thread by clients: {worker}"
    return note
