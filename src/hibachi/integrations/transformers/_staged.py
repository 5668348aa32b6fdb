"""A causal LM's decoder layers split into stages that run at once on different groups of rows.

``causal_lm_batcher(model, stages=K)`` splits the decoder's layers evenly into
K stages (`hibachi.Pipeline`), each a shallow copy of the inner decoder holding
its slice of ``layers`` (sharing every weight) and a slot cache of its own; the
last stage commits the rows' lengths only when it returns, so a step that
raises in any stage changes nothing. ``STAGED`` lists the model types checked
against ``generate()`` (``tests/integrations/transformers/test_stages.py``).
Groups of rows own disjoint slot ranges (`slot_ranges`); each group has its
own `StepPlanner` over lanes of its own (its slots' lanes and a scratch lane)
and its own share of the KV budget (`GroupMemory`): a release or an admission
in one group (on the batcher's engine thread) never touches a lane another
group's step is reading inside a stage, and a group never waits for memory
another group holds. Placement on one device per stage, and the host syncs that remain:
docs/pipeline.md, "Transformers stages".
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._autoregressive.pipelined import slot_ranges
from ..._core.pipeline import Pipeline
from ..._core.values import as_int, describe_value
from ..._exceptions import ConfigurationError
from ._architectures import ATTENTION, ServingPlan
from ._kv_cache import LaneCache, Plan
from ._kv_memory import CacheSizes, GroupMemory
from ._sampler import Fed, Sampler
from ._step_plan import Layout, StepPlanner, in_order

__all__ = ["STAGED", "StagedDecoder", "check_stages", "layer_devices", "stage_devices"]

STAGED: frozenset[str] = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Model types whose decoder, split into stages, gives ``generate()``'s tokens exactly."""


_PARTS = frozenset({"embed_tokens", "layers", "norm", "rotary_emb"})
"""The inner decoder's modules that placement knows where to put."""


def check_stages(stages: object) -> int:
    """How many stages ``stages`` asks for (an int >= 1, or a list of devices), or
    `ConfigurationError`."""
    if isinstance(stages, list | tuple):
        return len(_listed_devices(stages))
    count = as_int(stages)  # a NumPy integer too
    if count is None or count < 1:
        raise ConfigurationError(
            "stages must be an int >= 1 or a list of devices (one per stage), "
            f"got {describe_value(stages)}"
        )
    return count


def stage_devices(stages: object) -> list[torch.device] | None:
    """Each stage's device if ``stages`` lists them; None for a count."""
    if isinstance(stages, list | tuple):
        return _listed_devices(stages)
    check_stages(stages)
    return None


def layer_devices(layers: int, devices: list[torch.device]) -> list[torch.device]:
    """The device of each of ``layers`` layers: stage i's even slice on ``devices[i]``."""
    slices = _slices(layers, len(devices))
    return [device for device, part in zip(devices, slices, strict=True) for _ in part]


def _slices(layers: int, count: int) -> list[range]:
    bounds = np.linspace(0, layers, count + 1).round().astype(int).tolist()
    return [range(start, stop) for start, stop in itertools.pairwise(bounds)]


def _listed_devices(stages: list[Any] | tuple[Any, ...]) -> list[torch.device]:
    if not stages:
        raise ConfigurationError(
            f"stages={describe_value(stages)}: a list of devices needs at least one"
        )
    return [_device(entry, stages) for entry in stages]


def _device(entry: object, stages: object) -> torch.device:
    """``entry`` as a device that exists here (``"cuda"`` made ``cuda:<current>``)."""
    shown = f"stages={describe_value(stages)}: {describe_value(entry)}"
    if not isinstance(entry, str | torch.device):
        raise ConfigurationError(
            f"{shown} is not a device (a string such as 'cuda:0', or a torch.device)"
        )
    try:
        return torch.empty(0, device=entry).device
    except Exception as exc:  # torch says so with RuntimeError, or AssertionError (no CUDA)
        raise ConfigurationError(f"{shown} is not a device torch has here: {exc}") from exc


@dataclass
class _Placed:
    """A step's tensors on one device: positions, the cache's plan, masks, the rows' order."""

    positions: torch.Tensor
    plan: Plan
    masks: Any
    index: torch.Tensor | None

    def to(self, device: torch.device) -> _Placed:
        """A copy on ``device``, queued (non-blocking) behind whatever made these tensors."""
        plan = self.plan
        positions = _to(self.positions, device)
        columns = (
            positions if plan.write_columns is self.positions else _to(plan.write_columns, device)
        )
        read = plan.read if isinstance(plan.read, slice) else _to(plan.read, device)
        placed = Plan(_to(plan.write_rows, device), columns, read, plan.kv_length)
        masks = self.masks
        if isinstance(masks, dict):
            masks = {kind: None if m is None else _to(m, device) for kind, m in masks.items()}
        elif masks is not None:
            masks = _to(masks, device)
        return _Placed(
            positions, placed, masks, None if self.index is None else _to(self.index, device)
        )


@dataclass
class _Carry:
    """A step on its way through the stages: what every stage needs, and the hidden states."""

    slots: np.ndarray[Any, Any]
    planner: StepPlanner
    layout: Layout
    counts: np.ndarray[Any, Any] | None
    placed: dict[torch.device, _Placed]  # made on the first stage's device, copied on demand
    hidden: torch.Tensor
    ordered: Any  # the step's tokens in the layout's order, on the host
    fed: Fed | None = None  # what the sampler needs of the step's inputs


class StagedDecoder:
    """The stages of ``model``'s decoder, their caches, and each group's planner."""

    def __init__(
        self,
        model: Any,
        serving: ServingPlan,
        stages: int | list[torch.device],
        *,
        slots: int,
        sizes: CacheSizes,
        sampler: Sampler,
        cache_name: str,
    ) -> None:
        """``stages``: a count (every stage on the model's device), or each stage's device
        (``model``'s modules are moved: see docs/pipeline.md)."""
        count = stages if isinstance(stages, int) else len(stages)
        _refuse(model, serving, stages)
        if isinstance(stages, int):
            self.devices = [next(model.parameters()).device] * count
        else:
            self.devices = list(stages)
            _place(model, self.devices)
        self.count = count
        self.device = self.devices[0]
        self._serving = serving
        self._dtype = model.dtype
        self._sampler = sampler
        self._cache_name = cache_name
        self._parts = _split(model, self.devices)
        attention = [kind in ATTENTION for kind in serving.layers]
        lanes = slots + count  # a lane per slot, then each group's scratch lane
        self._caches = [LaneCache(lanes, sizes.columns, attention) for _ in range(count)]
        self._ranges = slot_ranges(slots, count)
        self._planners = [
            StepPlanner(slots, sizes.max_length, self.device, scratch=slots + group)
            for group in range(len(self._ranges))
        ]
        self.memories: list[GroupMemory] = [
            sizes.group(planner, self._caches, slot_range)
            for planner, slot_range in zip(self._planners, self._ranges, strict=True)
        ]
        self.group_of = np.zeros(slots, dtype=np.int64)
        for group, slot_range in enumerate(self._ranges):
            self.group_of[slot_range.start : slot_range.stop] = group
        self._keys = torch.arange(sizes.columns, device=self.device)

    def pipeline(self) -> Pipeline:
        middle = [self._middle(i) for i in range(1, self.count - 1)]
        return Pipeline(self.first, *middle, self.last, groups=self.count)

    def planner(self, slot: int) -> StepPlanner:
        return self._planners[int(self.group_of[slot])]

    def first(
        self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]
    ) -> _Carry:
        """Stage 1: plan the step for its group, embed the tokens, run the first layers."""
        with torch.inference_mode():
            group = int(self.group_of[slots[0]])
            planner, memory = self._planners[group], self.memories[group]
            for j in planner.missing(slots):  # rows fed without admission
                memory.place(int(slots[j]))
                self._sampler.start(int(slots[j]), options[j])
            memory.hold(slots, mask)
            layout, counts, positions, plan = planner.plan(slots, mask)
            masks = self._serving.masks(positions, plan.kv_length, None, self._dtype, self._keys)
            ordered = in_order(tokens, layout.host_index)
            ids = _to(ordered, self.device)
            placed = {self.device: _Placed(positions, plan, masks, layout.index)}
            carry = _Carry(slots.copy(), planner, layout, counts, placed, ids, ordered)
            carry.fed = self._sampler.fed(tokens, mask, slots)
            carry.hidden = self._run(0, carry, input_ids=ids)
            return carry

    def _middle(self, i: int) -> Any:
        def stage(carry: _Carry) -> _Carry:
            with torch.inference_mode():
                carry.hidden = self._run(i, carry, inputs_embeds=self._hidden(i, carry))
                return carry

        return stage

    def last(self, carry: _Carry) -> torch.Tensor:
        """The last stage: its layers, the norm and head; the tokens; then the commit."""
        with torch.inference_mode():
            i = self.count - 1
            logits = self._run(i, carry, inputs_embeds=self._hidden(i, carry))[:, -1]
            index = self._placed(i, carry).index
            if index is not None:
                logits = torch.empty_like(logits).index_copy_(0, index, logits)
            tokens = self._sampler.pick(logits, carry.slots, carry.fed)
            carry.planner.advance(carry.layout, carry.counts)  # the commit: nothing raises after
            memory = self.memories[int(self.group_of[carry.slots[0]])]
            memory.record(carry.layout, carry.counts, carry.ordered)
            return tokens

    def step(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]) -> Any:
        """The stages composed, on the calling thread."""
        carry = self.first(tokens, mask, slots, options)
        for i in range(1, self.count - 1):
            carry = self._middle(i)(carry)
        return self.last(carry)

    def release(self, slot: int) -> None:
        with torch.inference_mode():
            self.memories[int(self.group_of[slot])].release(slot)

    def _hidden(self, i: int, carry: _Carry) -> torch.Tensor:
        return _to(carry.hidden, self.devices[i])

    def _placed(self, i: int, carry: _Carry) -> _Placed:
        """The step's tensors on stage ``i``'s device (copied there once per step)."""
        device = self.devices[i]
        placed = carry.placed.get(device)
        if placed is None:
            placed = carry.placed[device] = carry.placed[self.device].to(device)
        return placed

    def _run(self, i: int, carry: _Carry, **inputs: Any) -> torch.Tensor:
        placed = self._placed(i, carry)
        cache = self._caches[i]
        cache.plan = placed.plan
        arguments = {
            self._cache_name: cache,
            "position_ids": placed.positions,
            "attention_mask": placed.masks,
            "use_cache": True,
            **inputs,
        }
        if i == self.count - 1:
            return self._parts[i](**arguments, logits_to_keep=1).logits  # type: ignore[no-any-return]
        return self._parts[i](**arguments).last_hidden_state  # type: ignore[no-any-return]


def _refuse(model: Any, serving: ServingPlan, stages: int | list[torch.device]) -> None:
    count = stages if isinstance(stages, int) else len(stages)
    shown = describe_value(stages if isinstance(stages, int) else [str(d) for d in stages])
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
    inner = _inner(model)
    layers = len(inner.layers)
    if count > layers:
        raise ConfigurationError(
            f"stages={shown} asks for {count} stages, more than the model's {layers} layers"
        )
    unknown = set(inner._modules) - _PARTS
    if not isinstance(stages, int) and unknown:
        raise ConfigurationError(
            f"stages={shown}: cannot place {type(model).__name__}'s {sorted(unknown)} on a stage"
        )


def _inner(model: Any) -> Any:
    inner = getattr(model, "model", None)
    if not isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        raise ConfigurationError(
            f"cannot split {type(model).__name__} into stages: no model.model.layers"
        )
    return inner


def _place(model: Any, devices: list[torch.device]) -> None:
    """Move ``model``'s layers, stage i's to ``devices[i]``; the embeddings to the first
    device, the norm and an untied head to the last (a tied one is copied by `_split`)."""
    inner = _inner(model)
    for layer, device in zip(inner.layers, layer_devices(len(inner.layers), devices), strict=True):
        layer.to(device)
    inner.embed_tokens.to(devices[0])
    inner.norm.to(devices[-1])
    head = model.get_output_embeddings()
    if head.weight is not inner.embed_tokens.weight:
        head.to(devices[-1])


def _split(model: Any, devices: list[torch.device]) -> list[Any]:
    """Callables for each stage: shallow copies of the decoder with a slice of its layers;
    the last wrapped in a shallow copy of ``model`` (its head). A stage calls the rotary
    embedding (and the last the head) on its own device, as a copy if it is elsewhere."""
    inner = _inner(model)
    layers, count = inner.layers, len(devices)
    copies: dict[torch.device, Any] = {}
    parts: list[Any] = []
    for i, (own, device) in enumerate(zip(_slices(len(layers), count), devices, strict=True)):
        part = _shallow(inner)
        part.layers = torch.nn.ModuleList(layers[own.start : own.stop])
        part.config = _sliced_config(inner.config, own.start, own.stop)
        rotary = getattr(inner, "rotary_emb", None)
        if rotary is not None:
            if device not in copies:
                copies[device] = _on_device(rotary, device)
            part.rotary_emb = copies[device]
        if i < count - 1:
            part.norm = torch.nn.Identity()
            parts.append(part)
        else:
            head = _shallow(model)
            head.model = part
            output = model.get_output_embeddings()
            head.set_output_embeddings(_on_device(output, device))
            parts.append(head)
    return parts


def _on_device(module: torch.nn.Module, device: torch.device) -> Any:
    """``module`` if its own tensors are on ``device``; else a shallow copy with them there
    (the module itself, shared with other stages, is not moved)."""
    tensors = [*module._parameters.values(), *module._buffers.values()]
    if all(t is None or t.device == device for t in tensors):
        return module
    clone = _shallow(module)
    clone._buffers = {k: None if b is None else b.to(device) for k, b in module._buffers.items()}
    clone._parameters = {
        k: None if p is None else torch.nn.Parameter(p.detach().to(device), requires_grad=False)
        for k, p in module._parameters.items()
    }
    return clone


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


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=True)
