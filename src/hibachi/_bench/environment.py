"""The machine a bench runs on, and keeping third-party chatter out of its output."""

from __future__ import annotations

import importlib
import logging
import os
import platform
from typing import Any

__all__ = ["busy_warning", "cuda_available", "describe_machine", "quiet_libraries"]


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


def busy_warning() -> str | None:
    """A warning when other processes already keep the CPUs busy, else None.

    With PyTorch's threads competing for cores, small sequential model calls
    slow down far more than batched ones: the comparison gets skewed.
    """
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load < 0.5 * cpus:
        return None
    return (
        f"this machine is busy (load average {load:.1f} on {cpus} CPUs): figures will be noisy, "
        "and one-at-a-time baselines slowed down more than batched methods"
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
