"""Workload 6, serving: hibachi serve and transformers serve, driven over HTTP by the same client.

Both servers are started side by side (child processes on 127.0.0.1, always
stopped) over the same model folder: SmolLM2-135M-Instruct's cached
conversion by default, a random Llama with ``--model tiny``. The same
streaming client (`load.client`) then sends each the same chat requests, the
servers taking turns at each point (the first to go changes from one point
to the next): a sweep of concurrent clients, each sending its next request
when its last ends, and a sweep of Poisson request rates. Every request asks
for ``max_tokens`` tokens, greedy; ``ignore_eos`` and ``min_tokens`` go
where the server accepts them (else the chat prompts, which ask for long
answers, keep lengths fixed in practice; the table says how many tokens
each server produced). The figures are ``vllm bench serve``'s
(`load.metrics`).

Beside them at each concurrency, the same requests through a hibachi batcher
in this process over the same weights: the server's figures against these
are what HTTP, JSON and text cost.

With ``--url``, the given OpenAI-compatible servers instead, nothing started
and no in-process reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import tempfile
import urllib.request
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..load.client import BatcherClient, ChatClient, Sender
from ..load.metrics import Slo, summarise
from ..load.schedule import Run, closed_loop, poisson
from ..models.chat import questions
from ..output.progress import Progress
from ..results import Column, Section, Series
from ..servers.commands import (
    HIBACHI,
    TRANSFORMERS,
    Shape,
    hibachi_serve,
    server_env,
    transformers_serve,
    with_port,
)
from ..servers.process import ServerProcess
from ..settings import BenchSettings, ServingSize
from ..timing.runs import HANG_SECONDS

__all__ = ["COLUMNS", "IN_PROCESS", "measure"]

COLUMNS = [
    Column("requests", "requests", "{}"),
    Column("output_tokens", "out tokens", "{}"),
    Column("output_throughput", "tokens/s", "{:,.1f}"),
    Column("goodput", "goodput", "{:.2f}/s"),
    Column("ttft_p50_ms", "TTFT p50", "{:,.0f} ms"),
    Column("ttft_p99_ms", "TTFT p99", "{:,.0f} ms"),
    Column("tpot_p50_ms", "TPOT p50", "{:,.0f} ms"),
    Column("tpot_p99_ms", "TPOT p99", "{:,.0f} ms"),
    Column("itl_p50_ms", "ITL p50", "{:,.0f} ms"),
    Column("itl_p99_ms", "ITL p99", "{:,.0f} ms"),
]
IN_PROCESS = "hibachi in process"
PANEL = "tokens/s over HTTP"


@dataclass(frozen=True)
class Point:
    """One load of the sweep: ``clients`` concurrent clients, or Poisson arrivals at ``rate``."""

    clients: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        if self.clients:
            return f"{self.clients} client{'' if self.clients == 1 else 's'}"
        return f"{self.rate:g} req/s"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.serving
    points = [Point(clients=c) for c in size.concurrency] + [Point(rate=r) for r in size.rates]
    progress.begin("serving", 2 + len(points))
    section = Section("serving", _title(settings), COLUMNS, settings=asdict(size))
    with contextlib.ExitStack() as stack:
        if size.urls:
            urls, folder = {url: url for url in size.urls}, None
        else:
            progress.doing("starting hibachi serve and transformers serve")
            folder = _model_folder(settings, stack)
            urls = _start_servers(settings, folder, stack)
        drive = _Drive(settings, points, section, progress)
        asyncio.run(drive.run(urls, folder))
    return section


def _title(settings: BenchSettings) -> str:
    size = settings.serving
    if size.urls:
        servers = ", ".join(size.urls)
    else:
        servers = f"{HIBACHI} vs {TRANSFORMERS} on {_model_name(settings)}"
    return f"Serving: {servers}, streaming chat completions of {size.max_tokens} tokens"


def _model_name(settings: BenchSettings) -> str:
    model = settings.generation.model
    if model == "smollm2":
        return "SmolLM2-135M-Instruct"
    return "a random Llama" if model == "tiny" else Path(model).name


def _model_folder(settings: BenchSettings, stack: contextlib.ExitStack) -> Path:
    """The transformers folder both servers load: the real model's converted copy, or the
    random Llama written to a temporary folder."""
    from hibachi.integrations.transformers._pretrained import transformers_folder

    from ..models.smollm2 import smollm2_source
    from ..models.tiny_folder import save_tiny_model

    model = settings.generation.model
    if model == "tiny":
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hibachi-bench-")))
        return save_tiny_model(folder, settings.generation, settings.seed)
    return transformers_folder(smollm2_source() if model == "smollm2" else Path(model))


def _start_servers(
    settings: BenchSettings, folder: Path, stack: contextlib.ExitStack
) -> dict[str, str]:
    """Both servers started (each stopped when ``stack`` closes); their names and URLs."""
    size = settings.serving
    shape = Shape(settings.device, max(size.concurrency), _max_length(size))
    env = server_env(settings.threads or _threads())
    commands = {
        HIBACHI: hibachi_serve(folder, shape),
        TRANSFORMERS: transformers_serve(folder, shape),
    }
    servers = [
        ServerProcess(
            name,
            functools.partial(with_port, command),
            env=env,
            start_seconds=size.start_seconds,
        )
        for name, command in commands.items()
    ]
    for server in servers:
        stack.callback(server.stop)
    for server in servers:
        server.start()
    return {server.name: server.url for server in servers}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _max_length(size: ServingSize) -> int:
    """Tokens per sequence: the longest chat prompt (well under 128) and the answer."""
    return 128 + size.max_tokens


class _Drive:
    """The sweep: every point, every target in turn, rows and curves into ``section``."""

    def __init__(
        self,
        settings: BenchSettings,
        points: list[Point],
        section: Section,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.size = settings.serving
        self.points = points
        self.section = section
        self.progress = progress
        self.slo = Slo(self.size.slo_ttft_ms, self.size.slo_tpot_ms)
        self.figures: dict[tuple[str, str], dict[str, Any]] = {}
        self.texts: dict[tuple[str, str], list[str]] = {}

    async def run(self, urls: dict[str, str], folder: Path | None) -> None:
        async with contextlib.AsyncExitStack() as stack:
            senders: dict[str, Sender] = {}
            for name, url in urls.items():
                senders[name] = await self._chat_client(name, url, stack)
            if folder is not None:
                self.progress.doing("loading the model in process")
                fixed = "ignore_eos" in getattr(senders.get(HIBACHI), "extra", {})
                reference = _in_process(folder, self, ignore_eos=fixed)
                senders[IN_PROCESS] = await stack.enter_async_context(reference)
            for index, point in enumerate(self.points):
                self.progress.doing(point.label)
                await self._point(index, point, senders)
        self._curves()
        self._notes()

    async def _chat_client(self, name: str, url: str, stack: contextlib.AsyncExitStack) -> Sender:
        model = await asyncio.to_thread(_model_id, url)
        client = await stack.enter_async_context(ChatClient(url, model))
        client.extra = await _accepted_extras(client, self.size.max_tokens)
        said = ", ".join(client.extra) or "no extra field"
        self.section.notes.append(f"{name}: {client.model!r} at {url}, sent {said}")
        warm = questions(2, self.settings.seed + 999)
        await closed_loop(client, warm, self.size.max_tokens, 2)  # the first requests pay once
        return client

    async def _point(self, index: int, point: Point, senders: dict[str, Sender]) -> None:
        names = [n for n in senders if n != IN_PROCESS or point.clients]
        turn = index % len(names)
        size = self.size
        count = size.requests_at(point.clients) if point.clients else size.rate_requests
        asked = questions(count, self.settings.seed + index)
        for name in names[turn:] + names[:turn]:  # who goes first turns from point to point
            run = await asyncio.wait_for(self._load(senders[name], point, asked), HANG_SECONDS)
            self.figures[(name, point.label)] = summarise(run, self.slo)
            self.texts[(name, point.label)] = [r.text for r in run.records]
            self._failures(name, point, run)
        for name in names:
            figures = self.figures[(name, point.label)]
            self.section.add(f"{_short(name)} · {point.label}", **figures)

    def _load(self, sender: Sender, point: Point, asked: list[str]) -> Awaitable[Run]:
        tokens = self.size.max_tokens
        if point.clients:
            return closed_loop(sender, asked, tokens, point.clients)
        assert point.rate is not None
        return poisson(sender, asked, tokens, point.rate, self.settings.seed)

    def _failures(self, name: str, point: Point, run: Run) -> None:
        errors = [r.error for r in run.records if r.error]
        if errors:
            self.section.notes.append(
                f"{name} · {point.label}: {len(errors)} failed, the first: {errors[0]}"
            )

    def _curves(self) -> None:
        counts = list(self.size.concurrency)
        labels = [Point(clients=c).label for c in counts]
        for name in dict.fromkeys(name for name, _ in self.figures):
            rates = [
                self.figures.get((name, label), {}).get("output_throughput") for label in labels
            ]
            if all(isinstance(r, float) for r in rates):
                y = [float(r) for r in rates if isinstance(r, float)]
                self.section.series.append(
                    Series(PANEL, name, "tokens/s", counts, y, name == IN_PROCESS)
                )

    def _notes(self) -> None:
        self.section.notes.insert(
            0,
            "TTFT: from sending a request to its first chunk of content; TPOT: per request, "
            "(latency - TTFT) / (output tokens - 1); ITL: every gap between chunks; "
            f"goodput: requests/s with TTFT <= {self.slo.ttft_ms:g} ms and TPOT <= "
            f"{self.slo.tpot_ms:g} ms (as vllm bench serve). out tokens: the fewest and most "
            "each request produced (the server's count where it sent one, else its chunks). "
            f"{IN_PROCESS}: the same requests through a hibachi batcher in this process, over "
            "the same weights (no HTTP, JSON or text).",
        )
        ratios = [self._ratio(p.label) for p in self.points]
        if any(ratios):
            self.section.notes.append(
                f"{HIBACHI} / {TRANSFORMERS}: " + "; ".join(r for r in ratios if r)
            )
        same = self._same_text()
        if same:
            self.section.notes.append(same)

    def _ratio(self, label: str) -> str:
        mine, theirs = self.figures.get((HIBACHI, label)), self.figures.get((TRANSFORMERS, label))
        if not mine or not theirs:
            return ""
        parts = [
            f"{what} {_quotient(mine.get(key), theirs.get(key))}"
            for what, key in (
                ("tokens/s", "output_throughput"),
                ("TTFT p50", "ttft_p50_ms"),
                ("TPOT p50", "tpot_p50_ms"),
            )
        ]
        return f"{label}: " + ", ".join(parts)

    def _same_text(self) -> str:
        pairs = [
            (self.texts[(HIBACHI, p.label)], self.texts[(TRANSFORMERS, p.label)])
            for p in self.points
            if (HIBACHI, p.label) in self.texts and (TRANSFORMERS, p.label) in self.texts
        ]
        if not pairs:
            return ""
        equal = sum(a == b for mine, theirs in pairs for a, b in zip(mine, theirs, strict=False))
        total = sum(len(mine) for mine, _ in pairs)
        return f"the same greedy text from both servers: {equal}/{total} requests"


def _short(name: str) -> str:
    """A row's name for a server: ``transformers serve`` (the title says with what)."""
    return "transformers serve" if name == TRANSFORMERS else name


def _quotient(a: Any, b: Any) -> str:
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return f"{a / b:.2f}x"
    return "—"


def _model_id(url: str) -> str:
    """The first model the server at ``url`` lists (``GET /v1/models``)."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=30) as response:
        listing = json.loads(response.read())
    return str(listing["data"][0]["id"])


async def _accepted_extras(client: ChatClient, max_tokens: int) -> dict[str, Any]:
    """The fields this server accepts, from most to least: fixed lengths and usage, usage
    alone, nothing (a server may refuse a field it does not know)."""
    usage = {"stream_options": {"include_usage": True}}
    fixed = {"ignore_eos": True, "min_tokens": max_tokens}
    for extra in ({**usage, **fixed}, usage):
        probe = {**extra, "min_tokens": 2} if "min_tokens" in extra else extra
        if await client.accepts(probe):
            return extra
    return {}


@contextlib.asynccontextmanager
async def _in_process(folder: Path, drive: _Drive, *, ignore_eos: bool) -> Any:
    """A `BatcherClient` over ``folder``'s model, loaded here, shaped as the server's (ending
    requests by their budget alone when the server was asked to ignore EOS)."""
    from hibachi.integrations.transformers import causal_lm_batcher
    from hibachi.integrations.transformers._pretrained import load_pretrained

    settings = drive.settings
    loaded = await asyncio.to_thread(load_pretrained, folder, device=settings.device)
    eos = loaded.model.generation_config.eos_token_id
    batcher = causal_lm_batcher(
        loaded.model,
        max_batch_size=max(drive.size.concurrency),
        max_length=_max_length(drive.size),
        eos_token_id=None if ignore_eos else eos[0] if isinstance(eos, list) else eos,
    )
    async with batcher:
        yield BatcherClient(batcher, loaded.tokenizer)
