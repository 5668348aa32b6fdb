"""How big each workload of `hibachi bench` is: the full, quick and tiny presets, and the
command line's changes to them (`Overrides`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = [
    "STAGE_WORK",
    "WORKLOADS",
    "BenchSettings",
    "EmbeddingSize",
    "GenerationSize",
    "OverheadSize",
    "Overrides",
    "PipelineSize",
    "ScalingSize",
    "ServingSize",
    "preset",
]

WORKLOADS = ("generation", "embeddings", "overhead", "scaling", "pipeline", "serving")
DEFAULT_WORKLOADS = WORKLOADS[:4]  # pipeline and serving run when asked for: --workloads
STAGE_WORK = ("blas", "sleep", "noop")  # what the pipeline workload's stand-in stages do


@dataclass(frozen=True)
class GenerationSize:
    """The generation workload: its model and clients (the scaling workload's model too).

    ``model``: "smollm2" (SmolLM2-135M-Instruct on chat prompts), "tiny" (a
    random-weight Llama of ``hidden``, ``layers``, ``heads`` and ``vocab``, on
    random prompts of ``prompt_lengths`` tokens), or the path of a ``.gguf``
    file or a transformers folder (on chat prompts).
    """

    clients: int
    batch_size: int
    prompt_lengths: tuple[int, int]
    budgets: tuple[int, int]
    hidden: int
    layers: int
    heads: int
    vocab: int
    repeat: int
    model: str = "smollm2"
    rounds: int = 0  # with rounds, every method once a round, alternating; else best of repeat
    prefix_caching_row: bool = True  # hibachi again with prefix caching off (not in quick: time)


@dataclass(frozen=True)
class EmbeddingSize:
    """The embeddings workload: all-MiniLM-L6-v2 over mixed-length texts.

    hibachi and the sorted loop run at each of ``batch_sizes``; the other
    methods, and the scaling workload's embeddings, at the largest. With
    ``rounds``, every method runs once a round, in alternating rounds, and
    keeps its best; without, each runs up to ``repeat`` times in a row.
    """

    texts: int
    words: tuple[int, int]
    batch_sizes: tuple[int, ...]
    repeat: int
    rounds: int = 0

    @property
    def batch_size(self) -> int:
        return max(self.batch_sizes)


@dataclass(frozen=True)
class OverheadSize:
    """The overhead workload: no-op models, so only the batching machinery costs."""

    rows: int
    steps: int
    callers: int
    batch_size: int
    repeat: int


@dataclass(frozen=True)
class ScalingSize:
    """The scaling workload: one request per client at each concurrency.

    Embeddings: each client embeds ``texts_per_client`` texts, or more where
    fewer than ``min_texts`` would be embedded in all (a few texts at one or
    two clients take a tenth of a second: too short to measure); hibachi and
    one call per text alternate for ``rounds`` rounds at each concurrency.
    """

    prompt_length: int
    budget: int
    texts_per_client: int
    repeat: int
    min_texts: int = 0
    rounds: int = 1
    worker_reference: bool = False  # embeddings: one call per text on a worker thread too

    def texts_at(self, clients: int) -> int:
        """How many texts ``clients`` clients embed in all: the same number each."""
        each = max(self.texts_per_client, -(-self.min_texts // clients))
        return clients * each


@dataclass(frozen=True)
class PipelineSize:
    """The pipeline workload: two stand-in stages, pipelined against composed.

    ``work``: what each stage does, from `STAGE_WORK`: a one-thread matmul of
    its rows (``width`` vectors of ``dim`` each) by a ``dim`` x ``dim``
    matrix, a sleep of ``sleep_ms`` per call, or nothing (the hand-offs alone).
    """

    clients: int = 32
    tokens: int = 128
    items: int = 4096
    batch_size: int = 32
    dim: int = 512
    width: int = 8
    repeat: int = 3
    work: tuple[str, ...] = ("blas",)
    sleep_ms: float = 2.0


@dataclass(frozen=True)
class ServingSize:
    """The serving workload: servers started over the real model (or ``urls``), driven
    over HTTP by streaming clients.

    At each of ``concurrency`` clients, ``max(min_requests, clients *
    requests_per_client)`` requests, each client sending its next when its
    last ends; at each of ``rates`` (requests per second), ``rate_requests``
    requests sent at Poisson arrivals. Every request asks for ``max_tokens``
    tokens. Goodput counts the requests whose time to first token and time
    per output token are both within ``slo_ttft_ms`` and ``slo_tpot_ms``.
    """

    concurrency: tuple[int, ...] = (1, 8, 32)
    rates: tuple[float, ...] = (0.5, 1.0, 2.0)
    requests_per_client: int = 2
    min_requests: int = 4
    rate_requests: int = 16
    max_tokens: int = 64
    slo_ttft_ms: float = 3000.0
    slo_tpot_ms: float = 300.0
    urls: tuple[
        str, ...
    ] = ()  # drive these servers instead of starting hibachi's and transformers'
    start_seconds: float = 300.0  # a server that does not answer within this is reported failed

    def requests_at(self, clients: int) -> int:
        """How many requests the sweep sends at ``clients`` concurrent clients."""
        return max(self.min_requests, clients * self.requests_per_client)


@dataclass(frozen=True)
class BenchSettings:
    """Everything one bench run needs to know."""

    preset: str
    device: str
    concurrency: tuple[int, ...]
    workloads: tuple[str, ...]
    generation: GenerationSize
    embeddings: EmbeddingSize
    overhead: OverheadSize
    scaling: ScalingSize
    repeat_within: float | None  # seconds: a method runs again (up to its repeat) only within
    # this time of its first run; None: always, as often as its repeat says
    threads: int | None = None  # PyTorch's intra-op threads; None: the CPUs left free
    seed: int = 0
    pipeline: PipelineSize = PipelineSize()
    serving: ServingSize = ServingSize()
    release_loop_pool: bool = False  # end the main thread's OpenMP workers before other threads run

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_FULL = BenchSettings(
    preset="full",
    device="cpu",
    concurrency=(1, 2, 4, 8, 16, 32, 64),
    workloads=DEFAULT_WORKLOADS,
    generation=GenerationSize(
        clients=32,
        batch_size=16,
        prompt_lengths=(8, 256),
        budgets=(16, 64),
        hidden=256,
        layers=4,
        heads=4,
        vocab=4096,
        repeat=2,
    ),
    embeddings=EmbeddingSize(texts=256, words=(4, 120), batch_sizes=(32,), repeat=2),
    overhead=OverheadSize(rows=64, steps=500, callers=20_000, batch_size=64, repeat=3),
    scaling=ScalingSize(
        prompt_length=32, budget=32, texts_per_client=4, repeat=2, min_texts=32, rounds=3
    ),
    repeat_within=20.0,
)

_QUICK = replace(
    _FULL,
    preset="quick",
    concurrency=(1, 4, 16),
    generation=replace(
        _FULL.generation,
        clients=8,
        batch_size=4,
        prompt_lengths=(8, 64),
        budgets=(8, 16),
        hidden=128,
        layers=2,
        vocab=1024,
        prefix_caching_row=False,
    ),
    embeddings=EmbeddingSize(texts=64, words=(4, 60), batch_sizes=(32,), repeat=2),
    overhead=OverheadSize(rows=64, steps=150, callers=2_000, batch_size=64, repeat=1),
    scaling=ScalingSize(
        prompt_length=16, budget=8, texts_per_client=2, repeat=1, min_texts=8, rounds=3
    ),
    repeat_within=1.5,
    pipeline=PipelineSize(tokens=32, items=1024, repeat=1),
    serving=ServingSize(
        rates=(2.0,), requests_per_client=1, min_requests=2, rate_requests=8, max_tokens=16
    ),
)

# For the CLI's own tests: every workload end to end, in a few seconds.
_TINY = replace(
    _QUICK,
    preset="tiny",
    concurrency=(1, 4),
    generation=replace(
        _QUICK.generation,
        clients=4,
        batch_size=2,
        prompt_lengths=(2, 8),
        budgets=(2, 6),
        hidden=32,
        layers=1,
        heads=2,
        vocab=128,
        repeat=1,
        model="tiny",
        prefix_caching_row=True,
    ),
    embeddings=EmbeddingSize(texts=6, words=(2, 12), batch_sizes=(4,), repeat=1),
    overhead=OverheadSize(rows=4, steps=5, callers=32, batch_size=8, repeat=1),
    scaling=ScalingSize(prompt_length=4, budget=3, texts_per_client=1, repeat=1),
    repeat_within=0.0,
    pipeline=PipelineSize(clients=4, tokens=3, items=16, batch_size=4, dim=16, width=1, repeat=1),
    serving=ServingSize(
        concurrency=(1, 2),
        rates=(8.0,),
        requests_per_client=1,
        min_requests=2,
        rate_requests=2,
        max_tokens=4,
        start_seconds=120.0,
    ),
)

_PRESETS = {s.preset: s for s in (_FULL, _QUICK, _TINY)}


@dataclass(frozen=True)
class Overrides:
    """The command line's changes to a preset's sizes; None (or False) keeps the preset's.

    Each applies to every workload that has the figure: ``clients`` to
    generation; ``batch_sizes`` to embeddings (all of them) and, when there is
    one, to generation, overhead (per item) and pipeline; ``repeat`` to every
    workload, each method then running exactly that many times (no time
    budget); ``rounds`` to generation, embeddings and scaling; ``texts`` and ``words`` to
    embeddings (``words`` to scaling's texts too); ``callers`` to overhead;
    ``worker_reference`` to scaling; ``stage_work`` to pipeline; ``model`` to
    generation and scaling (and the model the serving workload's servers
    serve); ``urls``, ``rates``, ``max_tokens`` and the SLO to serving.
    """

    clients: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    repeat: int | None = None
    rounds: int | None = None
    texts: int | None = None
    words: tuple[int, int] | None = None
    callers: int | None = None
    worker_reference: bool = False
    release_loop_pool: bool = False
    stage_work: tuple[str, ...] | None = None
    model: str | None = None
    urls: tuple[str, ...] | None = None
    rates: tuple[float, ...] | None = None
    max_tokens: int | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None

    def apply(self, settings: BenchSettings) -> BenchSettings:
        """``settings`` with these changes."""
        single = _single(self.batch_sizes)
        repeat = {"repeat": self.repeat} if self.repeat else {}
        return replace(
            settings,
            generation=_changed(
                settings.generation,
                clients=self.clients,
                batch_size=single,
                model=self.model,
                rounds=self.rounds,
                **repeat,
            ),
            embeddings=_changed(
                settings.embeddings,
                batch_sizes=self.batch_sizes,
                rounds=self.rounds,
                texts=self.texts,
                words=self.words,
                **repeat,
            ),
            overhead=_changed(settings.overhead, callers=self.callers, batch_size=single, **repeat),
            scaling=_changed(
                settings.scaling,
                rounds=self.rounds,
                worker_reference=self.worker_reference or None,
                **repeat,
            ),
            pipeline=_changed(settings.pipeline, batch_size=single, work=self.stage_work, **repeat),
            serving=_changed(
                settings.serving,
                urls=self.urls,
                rates=self.rates,
                max_tokens=self.max_tokens,
                slo_ttft_ms=self.slo_ttft_ms,
                slo_tpot_ms=self.slo_tpot_ms,
            ),
            repeat_within=None if self.repeat else settings.repeat_within,
            release_loop_pool=self.release_loop_pool or settings.release_loop_pool,
        )


def _single(batch_sizes: tuple[int, ...] | None) -> int | None:
    return batch_sizes[0] if batch_sizes and len(batch_sizes) == 1 else None


def _changed(size: Any, **changes: Any) -> Any:
    """``size`` with the changes that are not None."""
    return replace(size, **{k: v for k, v in changes.items() if v is not None})


def preset(
    name: str,
    *,
    device: str = "cpu",
    concurrency: tuple[int, ...] | None = None,
    workloads: tuple[str, ...] | None = None,
    threads: int | None = None,
    overrides: Overrides | None = None,
) -> BenchSettings:
    """The settings of preset ``name`` ("full", "quick" or "tiny"), with overrides.

    ``concurrency``: the client counts of the scaling and the serving workloads.
    """
    base = _PRESETS[name]
    settings = replace(
        base,
        device=device,
        concurrency=concurrency or base.concurrency,
        workloads=workloads or base.workloads,
        threads=threads,
        serving=_changed(base.serving, concurrency=concurrency),
    )
    return (overrides or Overrides()).apply(settings)
