"""Workload 4, scaling: throughput against the number of concurrent clients.

Generation: ``c`` clients each stream one request (same prompt length and
budget) through hibachi, next to ``generate()`` on one padded batch of the
same ``c`` requests (the limit), ``generate()`` one request at a time (a flat
line: it does not depend on ``c``) and transformers' ``generate_batch``;
hibachi's and ``generate_batch``'s batches hold up to the largest ``c``.
Embeddings: ``c`` callers each embed ``texts_per_client`` texts (more at low
concurrency: `ScalingSize.texts_at`) one after the other through hibachi
(batches of the embeddings workload's size), next to one model call per text
on the same texts; the two alternate for ``rounds`` rounds and each figure is
the median of its rounds, with hibachi's ratio per round summed up in a note.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import embeddings, generation
from .embeddings import ALONE
from .feedforward_embeddings import embed_alone
from .llm import LlmRequest, build_llama, hibachi_label, make_requests
from .minilm import PAD_VALUE, MiniLM, load_minilm, make_texts
from .progress import Progress
from .results import Column, Section, Series
from .rounds import alternate, ratio_summary
from .settings import BenchSettings, ScalingSize
from .timing import best_of, run_async

__all__ = ["alone_on_worker_curve", "embedding_curve", "measure"]

TOKENS = "tokens/s"
TEXTS = "texts/s"
HIBACHI = "hibachi"


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
    progress.doing("generation: building the Llama")
    model = build_llama(settings.generation, settings.device, settings.seed)
    counts, device = list(settings.concurrency), settings.device

    def hibachi_rate(c: int) -> float:
        outcome = generation.with_hibachi(model, _requests(settings, c), max(counts), device)
        return outcome.tokens_per_s

    def one_batch_rate(c: int) -> float:
        return generation.one_batch(model, _requests(settings, c), device).tokens_per_s

    def alone_rate() -> float:
        return generation.one_at_a_time(model, _requests(settings, 4), device).tokens_per_s

    def continuous_rate(c: int) -> float:
        requests = _requests(settings, c)
        return generation.continuous_batching(model, requests, max(counts)).tokens_per_s

    hibachi = _curve(settings, progress, "generation", hibachi_rate)
    one_batch = _curve(settings, progress, "generate() on a batch", one_batch_rate)
    alone = _best(settings, alone_rate)
    series = [
        Series("generation", hibachi_label(), TOKENS, counts, hibachi),
        Series("generation", generation.LIMIT, TOKENS, counts, one_batch),
        Series(
            "generation", "generate(), one at a time", TOKENS, counts, [alone] * len(counts), True
        ),
    ]
    try:
        continuous = _curve(settings, progress, "generate_batch", continuous_rate)
    except Exception as exc:
        section.notes.append(f"{generation.CONTINUOUS} skipped: {exc}")
    else:
        series.append(Series("generation", generation.CONTINUOUS, TOKENS, counts, continuous))
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


def _requests(settings: BenchSettings, count: int) -> list[LlmRequest]:
    scale = settings.scaling
    length, budget = scale.prompt_length, scale.budget
    return make_requests(
        count, (length, length), (budget, budget), settings.generation.vocab, settings.seed
    )


def _embedding_series(
    settings: BenchSettings, progress: Progress, section: Section
) -> list[Series]:
    progress.doing("embeddings: loading all-MiniLM-L6-v2")
    minilm = load_minilm(settings.device)
    counts, scale = list(settings.concurrency), settings.scaling
    most = max(scale.texts_at(c) for c in counts)
    texts = make_texts(most, settings.embeddings.words, settings.seed)
    try:
        embeddings.feedforward_batcher()
        served = True
    except embeddings.Unavailable as exc:
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
            methods[HIBACHI] = lambda: run_async(embedding_curve(minilm, mine, c, batch))
        progress.doing(f"embeddings, {c} clients: {len(mine)} texts, {scale.rounds} rounds")
        return alternate(methods, scale.rounds)

    figures = {c: rates(c) for c in counts}
    reference = [statistics.median(figures[c][ALONE]) for c in counts]
    series = [Series("embeddings", ALONE, TEXTS, counts, reference)]
    if not served:
        return series
    curve = [statistics.median(figures[c][HIBACHI]) for c in counts]
    section.notes.append(_ratio_note(counts, figures, scale))
    return [Series("embeddings", HIBACHI, TEXTS, counts, curve), *series]


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
    return (
        f"embeddings: texts/s are medians of {scale.rounds} rounds in which hibachi and one "
        f"call per text alternate; hibachi / one call per text by clients, median of the "
        f"rounds' ratios [lowest-highest]: {ratios}; texts in all by clients: {texts}"
    )


async def embedding_curve(minilm: MiniLM, texts: list[str], callers: int, batch_size: int) -> float:
    """Texts/s when ``callers`` callers share ``texts`` and embed theirs one at a time."""
    batcher_type = embeddings.feedforward_batcher()
    shares = [texts[i::callers] for i in range(callers)]
    async with batcher_type(minilm, max_batch_size=batch_size, pad_value=PAD_VALUE) as batcher:

        async def caller(mine: list[str]) -> None:
            for text in mine:
                await batcher.run(minilm.tokenize(text))

        await caller(texts[:1])  # the engine thread's first model call pays one-off set-up
        start = time.perf_counter()
        await asyncio.gather(*(caller(mine) for mine in shares))
        seconds = time.perf_counter() - start
    return len(texts) / seconds


async def alone_on_worker_curve(minilm: MiniLM, texts: list[str], callers: int) -> float:
    """Texts/s when ``callers`` callers share ``texts`` and each embeds its own, one call
    per text, on one worker thread (an async server without a batcher: its event loop
    must not run a forward itself)."""
    loop = asyncio.get_running_loop()
    shares = [texts[i::callers] for i in range(callers)]
    with ThreadPoolExecutor(1, thread_name_prefix="one-call-per-text") as worker:

        async def caller(mine: list[str]) -> None:
            for text in mine:
                await loop.run_in_executor(worker, minilm.alone, text)

        await caller(texts[:1])  # the worker thread's first model call, as for hibachi
        start = time.perf_counter()
        await asyncio.gather(*(caller(mine) for mine in shares))
        seconds = time.perf_counter() - start
    return len(texts) / seconds
