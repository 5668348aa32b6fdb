"""What a transformers causal LM can be known to refuse in ``run()``: prompts of
token ids it has no embedding for, or that are not token ids at all."""

from __future__ import annotations

from typing import Any

import torch

from ..._exceptions import InvalidRequest

__all__ = ["check_token_ids", "vocabulary_size"]


def vocabulary_size(model: Any) -> int | None:
    """How many token ids ``model`` embeds (its input embedding's rows), if it says."""
    embeddings = getattr(model, "get_input_embeddings", None)
    layer = embeddings() if callable(embeddings) else None
    rows = getattr(layer, "num_embeddings", None)
    if isinstance(rows, int):
        return rows
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) else None


def check_token_ids(prompt: Any, vocabulary: int | None) -> None:
    """InvalidRequest naming the first bad entry of ``prompt``: not an integer token
    id, or an id outside ``[0, vocabulary)``."""
    if not isinstance(prompt, torch.Tensor):
        raise InvalidRequest(f"the prompt must be a torch tensor, got {type(prompt).__name__}")
    if prompt.dtype == torch.bool or prompt.is_floating_point() or prompt.is_complex():
        raise InvalidRequest(f"the prompt's dtype is {prompt.dtype}: token ids are integers")
    if vocabulary is None:
        return
    outside = (prompt < 0) | (prompt >= vocabulary)
    if bool(outside.any()):
        position = int(outside.reshape(-1).nonzero()[0, 0])
        value = int(prompt.reshape(-1)[position])
        raise InvalidRequest(
            f"token id {value} at position {position} of the prompt is outside the "
            f"model's vocabulary [0, {vocabulary})"
        )
