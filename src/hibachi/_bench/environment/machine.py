"""The machine a bench runs on: what a results document names, so that figures can be compared."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["cuda_available", "describe_machine", "source_commit"]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def describe_machine(device: str) -> dict[str, Any]:
    """CPU, cores, memory, GPU, load average now, software versions and the source's commit."""
    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": device,
        "device_name": gpu if device == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
        "load_average": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The git commit of hibachi's source tree (``abc1234``, ``abc1234+dirty`` with uncommitted
    changes to tracked files), or None where hibachi is not run from its own checkout (an
    installed hibachi inside another project's repository is not that project's commit)."""
    here = Path(__file__).resolve()

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=here.parent, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if not here.is_relative_to(top / "src" / "hibachi"):
            return None
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
