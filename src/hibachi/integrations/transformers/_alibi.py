"""ALiBi models (Bloom, Falcon with ``alibi=True``): their biases at each row's own key positions.

These models build their attention biases from a 2D padding mask, so they
cannot take hibachi's per-row 4D masks as their ``attention_mask``. The
adapter calls them with no mask instead and, for that forward pass only,
hands each decoder layer the arguments it would get in ``generate()``
through a forward pre-hook: the per-row causal mask (Bloom, whose ALiBi
biases need no mask: the slot cache's key columns are the key positions), or
Falcon's ALiBi biases for keys at positions 0 … kv-1 folded into that mask,
as Falcon folds them. The hooks are removed when the pass ends, leaving the
model as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["ALIBI_SCHEMES", "layer_arguments", "scheme_arguments"]

BLOOM = "bloom"
FALCON = "falcon"
ALIBI_SCHEMES = frozenset({BLOOM, FALCON})


def scheme_arguments(scheme: str, model: Any, mask: torch.Tensor) -> dict[str, Any]:
    """What each decoder layer of ``model`` gets, given the (B, 1, W, kv) additive ``mask``."""
    if scheme == BLOOM:
        return {"attention_mask": mask}
    return _falcon_arguments(model.config, mask)


def _falcon_arguments(config: Any, mask: torch.Tensor) -> dict[str, Any]:
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    batch, _, _, keys = mask.shape
    heads = config.num_attention_heads
    ones = torch.ones((batch, keys), dtype=torch.long, device=mask.device)
    alibi = build_alibi_tensor(ones, heads, dtype=mask.dtype)
    scaled = alibi.reshape(batch, heads, 1, keys) / math.sqrt(config.hidden_size // heads)
    blocked = mask < -1
    folded = torch.masked_fill(scaled, blocked, torch.finfo(mask.dtype).min)
    return {"alibi": alibi, "attention_mask": folded}


@contextmanager
def layer_arguments(layers: list[torch.nn.Module], values: dict[str, Any]) -> Iterator[None]:
    """Within the block, each of ``layers`` is called with ``values`` in place of its own."""

    def replace(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        missing = set(values) - set(kwargs)
        if missing:
            raise TypeError(f"{type(module).__name__} was not given {sorted(missing)} by name")
        return args, {**kwargs, **values}

    handles = [layer.register_forward_pre_hook(replace, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """``model``'s decoder layers: the module list with one module per hidden layer."""
    count = model.config.num_hidden_layers
    base = getattr(model, "base_model", model)
    for child in base.children():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return list(child)
    raise LookupError(f"found no list of {count} decoder layers in {type(base).__name__}")
