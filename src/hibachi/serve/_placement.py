"""Where a served model runs and in which precision: ``--device`` and ``--dtype``.

``auto`` device: CUDA when torch sees a GPU, else the CPU. ``auto`` dtype:
float32 on the CPU (half precision is slower there, and inexact); on a GPU the
checkpoint's own dtype (a GGUF file dequantizes to float32).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    """``device``, with ``auto`` as ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str, checkpoint: Any = None) -> Any:
    """The torch dtype for ``dtype`` (one of `DTYPES`) on ``device``.

    ``checkpoint``: the dtype the weights were saved in (None: unknown), which
    ``auto`` keeps on a GPU.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if not device.startswith("cpu") and isinstance(checkpoint, torch.dtype):
        return checkpoint
    return torch.float32
