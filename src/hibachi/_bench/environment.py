"""The machine a bench runs on, and keeping third-party chatter out of its output."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
from collections.abc import Iterator
from typing import Any

__all__ = [
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
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def free_cpus() -> int:
    """The CPUs other processes leave idle (by the 1-minute load average), at least one."""
    cpus = os.cpu_count() or 1
    return max(1, min(cpus, cpus - round(os.getloadavg()[0])))


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


def busy_warning(threads: int) -> str | None:
    """A warning when other processes keep some CPUs busy, else None."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load < 0.5:
        return None
    return (
        f"other processes are using this machine (load average {load:.1f} on {cpus} CPUs): "
        f"PyTorch runs {threads} thread{'s' if threads > 1 else ''} (--threads to choose), "
        "and figures will be noisier than on an idle machine"
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
