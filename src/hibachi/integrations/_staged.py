"""A causal LM's decoder layers split into stages that run at once on different groups of rows.

``causal_lm_batcher(model, stages=K)`` splits the decoder's layers evenly into
K stages (`hibachi.Pipeline`), each run on a thread of its own with a slot
cache for its own layers. Each stage calls a shallow copy of the model's inner
decoder that holds only its slice of ``layers`` (sharing every weight): the
first embeds the tokens and runs its layers (no final norm); each next stage
is fed the hidden states (``inputs_embeds``); the last runs its layers, the
norm and the head, picks the tokens, and only then commits the rows' lengths
(a step that raises in any stage changes nothing).

Feeding hidden states as ``inputs_embeds`` is exact only where the decoder
does nothing to its embeddings before the layers (no scaling as in Gemma, no
position embeddings added as in GPT-2), and every layer keeps keys and
values. ``STAGED`` lists the model types checked token for token against
``generate()`` (``tests/test_transformers_stages.py``); any other is refused.

The groups of rows own disjoint slot ranges (`slot_ranges`), and each group
has its own `StepPlanner` over physical rows of its own: a release in one
group (on the batcher's engine thread) never moves a row that another
group's step, inside a stage, is reading.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._autoregressive.pipelined import slot_ranges
from .._core.pipeline import Pipeline
from .._exceptions import ConfigurationError
from ._architectures import ATTENTION, ServingPlan
from ._kv_cache import Plan, SlotCache
from ._sampling import Sampler
from ._step_plan import Layout, StepPlanner

__all__ = ["STAGED", "StagedDecoder", "check_stages"]

STAGED: frozenset[str] = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Model types whose decoder, split into stages, gives ``generate()``'s tokens exactly."""


def check_stages(stages: object) -> int:
    """``stages`` as a count of stages (an int >= 1), or `ConfigurationError`."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ConfigurationError(f"stages must be an int >= 1, got {stages!r}")
    return stages


@dataclass
class _Carry:
    """A step on its way through the stages: what every stage needs, and the hidden states."""

    slots: np.ndarray[Any, Any]
    planner: StepPlanner
    layout: Layout
    counts: np.ndarray[Any, Any] | None
    positions: torch.Tensor
    plan: Plan
    masks: Any
    hidden: torch.Tensor


class StagedDecoder:
    """The stages of ``model``'s decoder, their caches, and each group's planner."""

    def __init__(
        self,
        model: Any,
        serving: ServingPlan,
        count: int,
        *,
        slots: int,
        max_length: int,
        sampler: Sampler,
        cache_name: str,
    ) -> None:
        _refuse(model, serving, count)
        self.count = count
        self.device = next(model.parameters()).device
        self._serving = serving
        self._dtype = model.dtype
        self._sampler = sampler
        self._cache_name = cache_name
        self._parts = _split(model, count)
        attention = [kind in ATTENTION for kind in serving.layers]
        self._caches = [SlotCache(slots, max_length, attention) for _ in range(count)]
        self._ranges = slot_ranges(slots, count)
        self._planners = [
            StepPlanner(slots, max_length, self.device, first_row=r.start) for r in self._ranges
        ]
        self._group_of = np.zeros(slots, dtype=np.int64)
        for group, slot_range in enumerate(self._ranges):
            self._group_of[slot_range.start : slot_range.stop] = group
        self._keys = torch.arange(max_length + 1, device=self.device)

    def pipeline(self) -> Pipeline:
        middle = [self._middle(i) for i in range(1, self.count - 1)]
        return Pipeline(self.first, *middle, self.last, groups=self.count)

    def planner(self, slot: int) -> StepPlanner:
        return self._planners[int(self._group_of[slot])]

    def first(
        self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]
    ) -> _Carry:
        """Stage 1: plan the step for its group, embed the tokens, run the first layers."""
        with torch.inference_mode():
            planner = self.planner(int(slots[0]))
            for j in np.flatnonzero(planner.rows.phys[slots] < 0).tolist():
                planner.rows.add(int(slots[j]))  # kept by a retry after a step that raised
                self._sampler.start(int(slots[j]), options[j])
            layout = planner.layout(slots)
            width = int(mask.shape[1])
            counts = None
            if width == 1:
                positions, plan = planner.decode(layout)
            else:
                counts = _in_order(mask.sum(dim=1).numpy(force=True), layout.order)
                positions, plan = planner.prefill(layout, counts, width)
            masks = self._serving.masks(positions, plan.kv_length, None, self._dtype, self._keys)
            ids = _in_order(tokens, layout.host_index).to(self.device)
            carry = _Carry(slots.copy(), planner, layout, counts, positions, plan, masks, ids)
            carry.hidden = self._run(0, carry, input_ids=ids)
            return carry

    def _middle(self, i: int) -> Any:
        def stage(carry: _Carry) -> _Carry:
            with torch.inference_mode():
                carry.hidden = self._run(i, carry, inputs_embeds=carry.hidden)
                return carry

        return stage

    def last(self, carry: _Carry) -> torch.Tensor:
        """The last stage: its layers, the norm and head; the tokens; then the commit."""
        with torch.inference_mode():
            logits = self._run(self.count - 1, carry, inputs_embeds=carry.hidden)[:, -1]
            index = carry.layout.index
            if index is not None:
                logits = torch.empty_like(logits).index_copy_(0, index, logits)
            tokens = self._sampler.pick(logits, carry.slots)
            carry.planner.advance(carry.layout, carry.counts)  # the commit: nothing raises after
            return tokens

    def step(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]) -> Any:
        """The stages composed, on the calling thread."""
        carry = self.first(tokens, mask, slots, options)
        for i in range(1, self.count - 1):
            carry = self._middle(i)(carry)
        return self.last(carry)

    def release(self, slot: int) -> None:
        with torch.inference_mode():
            planner = self.planner(slot)
            moved = planner.rows.remove(slot)
            if moved is not None:
                src, dst, other = moved
                for cache in self._caches:
                    cache.move_row(src, dst, int(planner.lengths[other]))
            planner.lengths[slot] = 0

    def _run(self, i: int, carry: _Carry, **inputs: Any) -> torch.Tensor:
        cache = self._caches[i]
        cache.plan = carry.plan
        arguments = {
            self._cache_name: cache,
            "position_ids": carry.positions,
            "attention_mask": carry.masks,
            "use_cache": True,
            **inputs,
        }
        if i == self.count - 1:
            return self._parts[i](**arguments, logits_to_keep=1).logits  # type: ignore[no-any-return]
        return self._parts[i](**arguments).last_hidden_state  # type: ignore[no-any-return]


def _refuse(model: Any, serving: ServingPlan, count: int) -> None:
    model_type = str(getattr(model.config, "model_type", type(model).__name__))
    if model_type not in STAGED:
        raise ConfigurationError(
            f"stages={count} is not served for {type(model).__name__} ({model_type}): only "
            f"{sorted(STAGED)} have been checked to give generate()'s tokens when their layers "
            "are split (a decoder that scales its embeddings, as Gemma's, or adds position "
            "embeddings, as GPT-2's, would be wrong fed hidden states); use stages=1"
        )
    if serving.recurrent or serving.alibi or any(kind not in ATTENTION for kind in serving.layers):
        raise ConfigurationError(
            f"stages={count} is served only for models whose every layer is attention "
            f"with keys and values; {model_type} has {sorted(set(serving.layers))}"
        )
    layers = len(_inner(model).layers)
    if count > layers:
        raise ConfigurationError(f"stages={count} is more than the model's {layers} layers")


def _inner(model: Any) -> Any:
    inner = getattr(model, "model", None)
    if not isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        raise ConfigurationError(
            f"cannot split {type(model).__name__} into stages: no model.model.layers"
        )
    return inner


def _split(model: Any, count: int) -> list[Any]:
    """Callables for each stage: shallow copies of the decoder with a slice of its layers;
    the last wrapped in a shallow copy of ``model`` (its head)."""
    inner = _inner(model)
    layers = inner.layers
    bounds = np.linspace(0, len(layers), count + 1).round().astype(int).tolist()
    parts: list[Any] = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        part = _shallow(inner)
        part.layers = torch.nn.ModuleList(layers[start:stop])
        part.config = _sliced_config(inner.config, start, stop)
        if i < count - 1:
            part.norm = torch.nn.Identity()
            parts.append(part)
        else:
            head = _shallow(model)
            head.model = part
            parts.append(head)
    return parts


def _sliced_config(config: Any, start: int, stop: int) -> Any:
    """``config`` as the decoder copy holding layers ``start`` … ``stop - 1`` reads it: some
    decoders (Qwen 2/3) pick each layer's mask as ``config.layer_types[i]`` by its index in
    ``layers``, which restarts at 0 in every copy. The layers keep the whole config."""
    kinds = getattr(config, "layer_types", None)
    if kinds is None:
        return config
    sliced = copy.copy(config)
    sliced.layer_types = list(kinds[start:stop])
    return sliced


def _shallow(module: torch.nn.Module) -> Any:
    """A copy of ``module`` that shares its weights but not its table of submodules."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def _in_order(values: Any, order: Any) -> Any:
    if order is None:
        return values
    if isinstance(values, torch.Tensor):
        return values.index_select(0, torch.as_tensor(order).to(values.device))
    return values[order]
