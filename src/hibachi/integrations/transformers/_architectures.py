"""Which transformers causal LMs hibachi serves exactly: decided from the model, before serving.

`serving_plan(model)` either returns how to serve ``model`` — what each
layer keeps per slot (keys and values, or a recurrent state) and how each
kind of layer is masked — or raises `ConfigurationError` naming what is not
supported and why. hibachi serves only the model types it has checked, token
for token, against ``model.generate()`` (``_zoo.SERVED``, checked by
``tests/integrations/transformers/test_zoo.py``), and refuses every other one: a model must
never start serving and then give wrong tokens or fail on its first step.

Attention masks are built here, one per kind of layer, at each row's own
positions: the slot cache keeps a row's whole sequence (column = position)
and a sliding layer's mask hides the keys that fell out of its window,
exactly as ``generate()``'s masks do. Recurrent (Mamba-style) layers get the
step's 2D padding mask, or None when no row is padded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from ..._exceptions import ConfigurationError
from ._alibi import BLOOM, FALCON
from ._zoo import REFUSED, SERVED

__all__ = ["ATTENTION", "RECURRENT", "ServingPlan", "serving_plan"]

FULL = "full_attention"
SLIDING = "sliding_attention"
ATTENTION = frozenset({FULL, SLIDING})
RECURRENT = frozenset({"linear_attention", "conv"})
NO_CACHE = "dummy"
_MASKED_IMPLEMENTATIONS = (None, "sdpa", "eager")


@dataclass(frozen=True)
class ServingPlan:
    """How to serve a model.

    ``layers``: each layer's cache kind (``full_attention``,
    ``sliding_attention``, ``linear_attention``/``conv`` or ``dummy``).
    ``windows``: each kind of attention layer's sliding window (None: full).
    ``recurrent_kinds``: the kinds of layer that keep a recurrent state.
    ``unmasked_kinds``: the other kinds of layer the model names (MoE or MLP
    only layers). ``by_kind``: the model takes ``{kind: mask}`` instead of one mask.
    """

    layers: tuple[str, ...]
    windows: Mapping[str, int | None]
    recurrent_kinds: frozenset[str]
    unmasked_kinds: frozenset[str]
    by_kind: bool
    states_per_layer: int = 1
    alibi: str | None = None

    @property
    def recurrent(self) -> bool:
        """Whether some layer keeps a recurrent state (rows then step apart: see `_recurrent`)."""
        return bool(self.recurrent_kinds)

    def masks(
        self,
        positions: torch.Tensor,
        kv_length: int,
        padding: torch.Tensor | None,
        dtype: torch.dtype,
        keys: torch.Tensor | None = None,
    ) -> Any:
        """The ``attention_mask`` argument for tokens at ``positions`` (B, W).

        Attention layers get a (B, 1, W, kv_length) additive mask; recurrent
        layers ``padding``, (B, W) True on real tokens, or None if no row is padded.
        ``keys``: ``arange(n)`` for some ``n >= kv_length`` on the positions'
        device, kept by the caller (made here if None).
        """
        if keys is None:
            keys = torch.arange(kv_length, device=positions.device)
        by_kind = self._additive_by_kind(positions[:, :, None], keys[:kv_length], dtype)
        return self.with_other_kinds({k: m[:, None] for k, m in by_kind.items()}, padding)

    def mask_rows(
        self, positions: torch.Tensor, columns: int, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Each attention kind's additive mask (B, ``columns``) for one token at each of
        ``positions`` (B, 1): the keys of columns 0 … columns-1 it sees and those it does not."""
        keys = torch.arange(columns, device=positions.device)
        return self._additive_by_kind(positions, keys, dtype)

    def _additive_by_kind(
        self, queries: torch.Tensor, keys: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Each attention kind's additive mask of ``queries`` over ``keys`` (`_additive`)."""
        blocked_value, zero = _fill_values(dtype, queries.device)
        return {
            kind: _additive(queries, keys, window, blocked_value, zero)
            for kind, window in self.windows.items()
        }

    def with_other_kinds(self, attention: dict[str, Any], padding: torch.Tensor | None) -> Any:
        """The ``attention_mask`` argument, given each attention kind's mask: the recurrent
        kinds get ``padding``, the others None; one mask if the model takes one."""
        built = dict(attention)
        built.update(dict.fromkeys(self.recurrent_kinds, padding))
        built.update(dict.fromkeys(self.unmasked_kinds))
        return built if self.by_kind else next(iter(built.values()))


def _additive(
    queries: torch.Tensor,
    keys: torch.Tensor,
    window: int | None,
    blocked_value: torch.Tensor,
    zero: torch.Tensor,
) -> torch.Tensor:
    blocked = keys > queries
    if window is not None:
        blocked |= keys <= queries - window
    return torch.where(blocked, blocked_value, zero)


@functools.lru_cache(maxsize=8)
def _fill_values(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive mask's two values, blocked and open, as tensors of ``dtype`` on ``device``."""
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)
    return blocked, torch.zeros((), dtype=dtype, device=device)


def serving_plan(model: Any, max_length: int) -> ServingPlan:
    """How to serve ``model``; `ConfigurationError` if hibachi cannot serve it exactly."""
    config = model.config
    model_type = str(getattr(config, "model_type", type(config).__name__))
    _refuse_known(model, model_type)
    _refuse_features(config, model_type)
    _refuse_local_attention(config, model_type, max_length)
    layers, windows, states = _layers(config, model_type)
    _refuse_unchecked(model, model_type)
    mask_kinds = set(windows) | (set(layers) & RECURRENT)
    by_kind = _takes_mask_mapping(model)
    if len(mask_kinds) > 1 and not by_kind:
        raise ConfigurationError(
            f"{model_type} mixes {sorted(mask_kinds)} layers but takes a single attention mask: "
            "hibachi cannot mask each kind of layer apart"
        )
    named = set(getattr(config.get_text_config(decoder=True), "layer_types", None) or ())
    return ServingPlan(
        layers=tuple(layers),
        windows=windows,
        recurrent_kinds=frozenset(layers) & RECURRENT,
        unmasked_kinds=frozenset(named - mask_kinds),
        by_kind=by_kind,
        states_per_layer=states,
        alibi=_alibi_scheme(config, model_type),
    )


def _refuse_known(model: Any, model_type: str) -> None:
    if model_type in REFUSED:
        name = type(model).__name__
        reason = REFUSED[model_type]
        raise ConfigurationError(f"hibachi does not serve {name} ({model_type}): {reason}")


def _refuse_unchecked(model: Any, model_type: str) -> None:
    if model_type not in SERVED:
        raise ConfigurationError(
            f"hibachi does not serve {type(model).__name__} (model_type {model_type!r}): "
            "it has not been checked "
            "to give model.generate()'s tokens exactly, so it is refused rather than risk wrong "
            "tokens (docs/transformers.md lists the served families)"
        )


def _refuse_features(config: Any, model_type: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigurationError(f"{model_type} is an encoder-decoder model, not a causal LM")
    if getattr(config, "alibi", False) and _alibi_scheme(config, model_type) is None:
        raise ConfigurationError(
            f"{model_type} with alibi=True: ALiBi is served for Bloom and Falcon only"
        )
    scheme = getattr(config, "position_embedding_type", None)
    if scheme not in (None, "absolute", "rope", "rotary"):
        raise ConfigurationError(
            f"{model_type} with position_embedding_type={scheme!r}: only absolute and rotary "
            "positions are served"
        )
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in _MASKED_IMPLEMENTATIONS:
        raise ConfigurationError(
            f"attn_implementation={implementation!r} ignores hibachi's per-row attention masks: "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    if any(mode == "reuse" for mode in getattr(config, "kv_sharing_modes", None) or ()):
        raise ConfigurationError(f"{model_type} shares keys and values between layers")


def _refuse_local_attention(config: Any, model_type: str, max_length: int) -> None:
    """GPT-Neo's local layers band keys by the batch's key count, not each row's position."""
    local = "local" in (getattr(config, "attention_layers", None) or ())
    window = getattr(config, "window_size", None)
    if local and isinstance(window, int) and window < max_length:
        raise ConfigurationError(
            f"{model_type}'s local attention layers (window_size={window}) place their window "
            f"by the batch's key count, not each row's position: use max_length <= {window}"
        )


def _alibi_scheme(config: Any, model_type: str) -> str | None:
    if model_type == BLOOM:
        return BLOOM
    if model_type == FALCON and getattr(config, "alibi", False):
        return FALCON
    return None


def _layers(config: Any, model_type: str) -> tuple[list[str], dict[str, int | None], int]:
    """Each layer's cache kind (as ``DynamicCache`` builds it), each attention kind's window,
    and how many recurrent states a recurrent layer keeps."""
    try:
        kinds, settings = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot tell {model_type}'s kinds of layer: {exc}") from exc
    unknown = sorted(set(kinds) - ATTENTION - RECURRENT - {NO_CACHE})
    if unknown:
        raise ConfigurationError(
            f"{model_type} has {unknown} layers: hibachi serves full and sliding-window "
            "attention and recurrent (Mamba-style) layers"
        )
    windows: dict[str, int | None] = {}
    for kind, setting in zip(kinds, settings, strict=True):
        if kind in ATTENTION:
            window = setting.get("sliding_window")
            if windows.setdefault(kind, window) != window:
                raise ConfigurationError(f"{model_type}'s sliding layers have different windows")
    if windows.get(SLIDING, 1) is None:
        raise ConfigurationError(f"{model_type} has sliding layers but no sliding_window")
    states = max((setting.get("number_of_states", 1) for setting in settings), default=1)
    return list(kinds), windows, int(states)


def _takes_mask_mapping(model: Any) -> bool:
    """Whether ``model``'s decoder takes ``{layer kind: mask}`` as its attention mask."""
    base = getattr(model, "base_model", model)
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping := attention_mask, dict" in " ".join(source.split())
