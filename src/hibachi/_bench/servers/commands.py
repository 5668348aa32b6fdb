"""The command lines of the servers the serving workload compares, over one model folder.

Both serve the same transformers folder (a GGUF file's cached conversion,
`hibachi.integrations.transformers._pretrained.transformers_folder`), in
float32 on the bench's device, with nothing downloaded (``HF_HUB_OFFLINE``),
on as many PyTorch threads as the bench gives itself (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HIBACHI",
    "TRANSFORMERS",
    "Shape",
    "hibachi_serve",
    "server_env",
    "transformers_serve",
    "with_port",
]

HIBACHI = "hibachi serve"
TRANSFORMERS = "transformers serve --continuous-batching"
KV_BLOCK = 32  # tokens per block of transformers' paged cache


@dataclass(frozen=True)
class Shape:
    """What both servers are given: the device, sequences at once, tokens per sequence."""

    device: str
    max_batch_size: int
    max_length: int


def server_env(threads: int) -> dict[str, str]:
    """What both servers' environments set: offline, quiet, ``threads`` PyTorch threads."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def hibachi_serve(folder: Path, shape: Shape) -> list[str]:
    """``hibachi serve`` over ``folder`` (its port appended by `with_port`)."""
    return [
        _script("hibachi"),
        "serve",
        "--model",
        str(folder),
        "--device",
        shape.device,
        "--max-batch-size",
        str(shape.max_batch_size),
        "--max-length",
        str(shape.max_length),
        "--shutdown-grace",
        "1",
        "--host",
        "127.0.0.1",
    ]


def transformers_serve(folder: Path, shape: Shape) -> list[str]:
    """``transformers serve --continuous-batching`` over ``folder``, its paged cache sized for
    ``max_batch_size`` sequences of ``max_length`` tokens (left to size itself on a CPU, it
    takes most of the machine's memory and its first request waits a minute)."""
    blocks = shape.max_batch_size * -(-shape.max_length // KV_BLOCK)
    return [
        _script("transformers"),
        "serve",
        str(folder),
        "--continuous-batching",
        "--device",
        shape.device,
        "--dtype",
        "float32",
        "--cb-block-size",
        str(KV_BLOCK),
        "--cb-num-blocks",
        str(blocks),
        "--cb-max-batch-tokens",
        str(max(512, shape.max_length)),
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
    ]


def with_port(command: list[str], port: int) -> list[str]:
    """``command`` with ``--port port`` appended (both servers take it)."""
    return [*command, "--port", str(port)]


def _script(name: str) -> str:
    """The console script ``name`` of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"the {name} command is not installed")
    return found
