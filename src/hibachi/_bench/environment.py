"""The machine a bench runs on, and keeping third-party chatter out of its output."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "busy_cpus",
    "busy_warning",
    "cuda_available",
    "describe_machine",
    "free_cpus",
    "quiet_libraries",
    "torch_threads",
]


def quiet_libraries() -> None:
    """No hub access, no tokenizer fork warnings, no progress bars or info logs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging: Any = importlib.import_module("transformers.utils.logging")

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # transformers' continuous batching logs at ERROR on a CPU without psutil.
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def describe_machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    return {
        "device": device,
        "device_name": name,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def busy_cpus(window: float = 0.3) -> float:
    """How many CPUs other processes keep busy right now (call it before starting work).

    Measured from ``/proc/stat`` over ``window`` seconds; where that file does
    not exist, the 1-minute load average stands in.
    """
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except (OSError, ValueError):
        return os.getloadavg()[0]
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def free_cpus(busy: float) -> int:
    """The CPUs left for the bench (a CPU counts as taken when 3/4 busy), at least one."""
    cpus = os.cpu_count() or 1
    return max(1, cpus - int(busy + 0.25))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads inside the block; the previous count after it.

    More threads than free cores is far worse than fewer: each operation waits
    for its slowest thread, and small sequential calls (the one-at-a-time
    baselines) slow down many times more than batched ones.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def busy_warning(busy: float) -> str | None:
    """A warning when other processes keep at least half a CPU busy, else None."""
    if busy < 0.5:
        return None
    return (
        f"other processes keep {busy:.1f} of {os.cpu_count()} CPUs busy: PyTorch gets the CPUs "
        "they leave free (--threads N to choose), and figures will be noisier than on an idle "
        "machine"
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
