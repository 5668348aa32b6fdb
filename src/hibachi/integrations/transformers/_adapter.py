"""`causal_lm_batcher` and `CausalLMAdapter`: a transformers causal LM as an `IncrementalModel`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, final

import numpy as np
import torch

from ..._autoregressive.batcher import AutoregressiveBatcher
from ..._autoregressive.incremental import Accepted, IncrementalModel
from ..._autoregressive.stats import MemoryStats
from ..._core.pipeline import Pipeline
from ..._core.settings import UNSET, check_count, check_flag, renamed
from ..._core.values import describe_value
from ..._exceptions import ConfigurationError, InvalidRequest
from ._alibi import decoder_layers, layer_arguments, scheme_arguments
from ._architectures import ATTENTION, RECURRENT, serving_plan
from ._decode_masks import DecodeMasks
from ._kv_cache import LaneCache
from ._kv_memory import cache_sizes, memory_stats, model_context
from ._prompt_checks import check_token_ids, vocabulary_size
from ._recurrent import RecurrentSlots
from ._row_attention import Segmenter, Segments, selected
from ._sampler import RowOptions, Sampler
from ._sampling import Sampling
from ._staged import StagedDecoder, check_stages, stage_devices
from ._step_plan import Layout, StepPlanner, in_order, on_device

__all__ = ["CausalLMAdapter", "Sampling", "causal_lm_batcher"]


def causal_lm_batcher(
    model: Any,
    *,
    max_batch_size: int = 16,
    max_length: int | None = None,
    eos_token_id: int | None,
    pad_token_id: int | None = None,
    max_batch_tokens: int = 512,
    device: Any = "cpu",
    stages: int | Sequence[str | torch.device] = 1,
    max_queue_size: int | None = 65536,
    max_new_tokens: int = 1024,
    max_prompt_length: int | None = None,
    max_unread_tokens: int | None = 65536,
    delivery_thread: bool = False,
    kv_cache_bytes: int | None = None,
    block_size: int = 16,
    prefix_caching: bool = True,
    prefill_chunk: int = UNSET,
    overlap: bool = UNSET,
) -> AutoregressiveBatcher:
    """An `AutoregressiveBatcher` serving transformers causal LM ``model`` with a KV cache.

    Args:
        model: a ``transformers`` causal LM (``…ForCausalLM``) in eval mode,
            on any device.
        max_batch_size: at most this many sequences run at once (the cache's
            lanes; they cost memory only as they hold tokens).
        max_length: the most tokens (prompt and generated) one sequence
            holds. A longer prompt is refused with `InvalidRequest`; a sequence
            that fills its lane ends there. None (the default): the model's
            context (``max_position_embeddings`` or its config's equivalent;
            4,096 for a model that names none).
        eos_token_id: the token that ends a sequence (yielded last), or None:
            then a sequence ends by its budget (``max_new_tokens``) alone.
        pad_token_id: fills the left of shorter rows (never seen by the
            model); ``eos_token_id`` if None, or 0 if that is None too. Token
            ids keep Hugging Face's names: the batcher's ``pad_value`` and
            ``stop_token`` are these ids as tensors on ``device``.
        max_batch_tokens: the most prompt cells (rows * width) one step feeds.
        device: where prompts and the tokens handed back live (the CPU by
            default, whatever device the model is on).
        stages: split the decoder's layers evenly into this many stages, each
            on a thread of its own with the cache of its own layers, with as
            many groups of rows in flight (see `hibachi.Pipeline`): while the
            last stage computes one group's step, the first computes the
            next's. Served for the model types in ``_staged.STAGED`` (checked
            against ``generate()``); any other is refused with
            `ConfigurationError`. ``max_batch_size`` is the rows of all groups.
            A list of devices (``["cuda:0", "cuda:1"]``, strings or
            ``torch.device``) places stage i on device i: **the model's
            modules are moved** (stage i's layers to device i, the embeddings
            to the first, the norm and head to the last; a one-device list
            moves the whole model there). Untested on real GPUs.
        max_queue_size, max_new_tokens, max_prompt_length, max_unread_tokens,
            delivery_thread: as `AutoregressiveBatcher`'s.
        kv_cache_bytes: the most memory the keys and values of every row
            may take, in bytes (cached prefixes included): it, not
            ``max_length``, decides how many rows run at once. A request
            admitted waits until the blocks of its prompt are free; a row
            that needs memory none has preempts the newest row (recomputed
            later, its stream only paused). A prompt longer than the budget
            holds is refused with `InvalidRequest`. None: half the memory
            available when the batcher is made (the CPU's, or the GPU's the
            model is on). See ``docs/kv-cache.md``.
        block_size: the tokens in a block, the unit the budget is counted
            and prefixes are cached in.
        prefix_caching: keep every full block of keys and values computed,
            named by its tokens and all before them, for later prompts that
            begin with the same tokens (a chat template's system prompt): they
            are not computed again. Cached blocks take memory until it is
            needed. Off (whatever this says) for models with recurrent layers,
            whose state at a block's end is not kept.
        prefill_chunk, overlap: the old names of ``max_batch_tokens`` and
            ``delivery_thread``; deprecated.

    A request's ``options`` is None (greedy) or a mapping with any of
    ``temperature``, ``top_k``, ``top_p``, ``seed``, ``logit_bias``,
    ``min_tokens``, ``repetition_penalty``, ``frequency_penalty``,
    ``presence_penalty`` and ``ignore_eos`` (see `Sampling`), or a `Sampling`.
    Each row is chosen on its own: a seeded request gets the same tokens alone
    or in any batch. ``ignore_eos`` makes ``eos_token_id`` an ordinary token for
    that request, which then runs to its budget; ``min_tokens`` keeps it back.
    """
    owner = "causal_lm_batcher"
    chunk = renamed(
        owner, "prefill_chunk", "max_batch_tokens", prefill_chunk, max_batch_tokens, 512
    )
    courier = renamed(owner, "overlap", "delivery_thread", overlap, delivery_thread, False)
    stop = _NO_TOKEN if eos_token_id is None else _token_id(eos_token_id, "eos_token_id")
    pad = _token_id(_first_given(pad_token_id, eos_token_id, 0), "pad_token_id")
    adapter = CausalLMAdapter(
        model,
        slots=max_batch_size,
        max_length=max_length,
        stages=stages,
        eos_token_id=eos_token_id,
        kv_cache_bytes=kv_cache_bytes,
        block_size=block_size,
        prefix_caching=prefix_caching,
    )
    return AutoregressiveBatcher(
        adapter,
        stop_token=torch.tensor(stop, device=device),
        pad_value=torch.tensor(pad, device=device),
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
        max_new_tokens=max_new_tokens,
        max_batch_tokens=chunk,
        max_prompt_length=max_prompt_length,
        max_unread_tokens=max_unread_tokens,
        delivery_thread=courier,
    )


@final
class CausalLMAdapter(IncrementalModel):
    """A transformers causal LM as an `IncrementalModel`, over a paged KV cache.

    ``max_length``, ``kv_cache_bytes``, ``block_size``, ``prefix_caching``:
    as `causal_lm_batcher`'s (None: the model's context, and half the memory
    available).
    """

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        max_length: int | None = None,
        stages: int | Sequence[str | torch.device] = 1,
        eos_token_id: int | None = None,
        kv_cache_bytes: int | None = None,
        block_size: int = 16,
        prefix_caching: bool = True,
    ) -> None:
        """``eos_token_id``: the batcher's stop token, which ``min_tokens`` keeps back
        (None: there is none)."""
        devices = stage_devices(stages)
        count = check_stages(stages) if devices is None else len(devices)
        max_length = model_context(model) if max_length is None else max_length
        _check_model(model, max_length)
        self._serving = serving_plan(model, max_length)
        if devices is not None and count == 1:
            model.to(devices[0])  # one stage: the whole model on its device
        self.model = model
        self.max_length = max_length
        self.device = next(model.parameters()).device
        self._dtype = model.dtype
        self._call = _call_arguments(model)
        layers = self._serving.layers
        attention = [kind in ATTENTION for kind in layers]
        self.sizes = cache_sizes(
            model,
            self._call.cache,
            attention,
            max_length=max_length,
            block_size=check_count(block_size, "block_size"),
            kv_cache_bytes=_optional_bytes(kv_cache_bytes),
            prefix_caching=check_flag(prefix_caching, "prefix_caching")
            and not self._serving.recurrent,
            groups=count,
        )
        columns = self.sizes.columns
        self._cache = LaneCache(slots + 1, columns, attention)  # the last lane: scratch
        recurrent = [i for i, kind in enumerate(layers) if kind in RECURRENT]
        self._states = RecurrentSlots(slots, recurrent, self._serving.states_per_layer)
        self._planner = StepPlanner(slots, max_length, self.device, scratch=slots)
        self._lengths = self._planner.lengths  # shorthands for the planner's own arrays,
        self._rows = self._planner.rows  # which step() and release() use (tests read the planner)
        self._keys = torch.arange(columns, device=self.device)
        self._sampler = Sampler(
            slots,
            max_length,
            self.device if devices is None else devices[-1],
            stop_token=eos_token_id,
        )
        self._layers = _decoder_layers(model) if self._serving.alibi else []
        self._segmenter = _segmenter(model, self._serving.alibi)
        self._decode_masks = DecodeMasks(self._serving, slots, columns)
        self.vocab_size = vocabulary_size(model)
        self._staged = None
        self._groups = [self.sizes.group(self._planner, [self._cache], range(slots))]
        self._group_of = np.zeros(slots, dtype=np.int64)
        self._fed: tuple[Any, ...] | None = None  # the last forward's (layout, counts, tokens)
        if count > 1:
            self._staged = StagedDecoder(
                model,
                self._serving,
                count if devices is None else devices,
                slots=slots,
                sizes=self.sizes,
                sampler=self._sampler,
                cache_name=self._call.cache,
            )
            self._groups = self._staged.memories
            self._group_of = self._staged.group_of

    def check_request(self, prompt: Any, max_new_tokens: int, options: Any) -> Accepted:
        check_token_ids(prompt, self.vocab_size)
        length = int(prompt.shape[0])
        if length > self.max_length:
            raise InvalidRequest(
                f"the prompt has {length} tokens, more than max_length={self.max_length}"
            )
        room = self.sizes.row_tokens
        if length > room:
            raise InvalidRequest(
                f"the prompt has {length} tokens, more than the {room} the KV cache's budget "
                f"holds for a row (kv_cache_bytes={self.sizes.budget}: "
                f"{self.sizes.bytes_per_token} bytes a token)"
            )
        settings = Sampling.parse(options)
        _check_settings(settings, max_new_tokens, self.vocab_size)
        return Accepted(
            min(max_new_tokens, min(self.max_length, room) - length + 1),
            RowOptions(settings, length),
            ends_at_stop_token=not settings.ignore_eos,
        )

    def admit(self, slot: int, prompt: Any, options: Any, generated: int) -> int | None:
        """Give ``slot`` a lane and the blocks of ``prompt`` (and its cached prefix)."""
        with torch.inference_mode():
            group = self._groups[int(self._group_of[slot])]
            held = group.admit(slot, prompt.numpy(force=True))
            if held is not None:  # draws are keyed by position: a recomputed row's repeat
                self._sampler.start(slot, options, cached=prompt[:held])
            return held

    def reserve(self, slots: np.ndarray[Any, Any], counts: Any) -> bool:
        """Hold the blocks of ``counts`` more tokens in each of ``slots`` (one group's)."""
        return self._groups[int(self._group_of[slots[0]])].reserve(slots, counts)

    def memory_stats(self) -> MemoryStats:
        return memory_stats(self._groups, self.sizes.bytes_per_block)

    def pipeline(self) -> Pipeline | None:
        """With ``stages`` > 1, the decoder's layers in stages (see `_staged`)."""
        return None if self._staged is None else self._staged.pipeline()

    def step(
        self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any], options: list[Any]
    ) -> torch.Tensor:
        if self._staged is not None:
            return self._staged.step(tokens, mask, slots, options)  # type: ignore[no-any-return]
        with torch.inference_mode():
            group, self._fed = self._groups[0], None
            for j in self._planner.missing(slots):  # rows fed without admission
                group.place(int(slots[j]))
                self._sampler.start(int(slots[j]), options[j])
            group.hold(slots, mask)
            fed = self._sampler.fed(tokens, mask, slots)
            lengths = self._lengths[slots]
            recurrent = self._serving.recurrent
            states = self._states.save(on_device(slots, self.device)) if recurrent else None
            try:
                if recurrent:
                    logits = self._recurrent_step(tokens, mask, slots)
                else:
                    logits = self._forward(tokens, mask, slots)
                picked = self._sampler.pick(logits, slots, fed)  # last: it commits or undoes
            except BaseException:
                # a step that raised changes nothing (see IncrementalModel: retries)
                self._lengths[slots] = lengths
                self._planner.forget()
                if states is not None:
                    self._states.restore(states)
                raise
            if self._fed is not None:
                group.record(*self._fed)
            return picked

    def release(self, slot: int) -> None:
        with torch.inference_mode():
            self._groups[int(self._group_of[slot])].release(slot)
            self._states.reset(slot)

    def _recurrent_step(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any]) -> torch.Tensor:
        """Fresh rows in one pass (from zero states); the others one column at a time."""
        fresh = self._lengths[slots] == 0
        mask = mask.cpu()
        parts = []
        if fresh.any():
            rows = torch.from_numpy(np.flatnonzero(fresh))
            first = int(mask[rows].any(dim=0).int().argmax())  # drop columns of padding only
            logits = self._forward(
                _take(tokens, rows)[:, first:], mask[rows, first:], slots[rows.numpy()]
            )
            parts.append((rows, logits))
        if not fresh.all():
            rows = torch.from_numpy(np.flatnonzero(~fresh))
            for column in range(int(mask.shape[1])):
                real = rows[mask[rows, column]]
                if len(real):
                    logits = self._forward(
                        _take(tokens, real)[:, column : column + 1],
                        mask[real, column : column + 1],
                        slots[real.numpy()],
                    )
            parts.append((rows, logits))
        out = logits.new_empty((len(slots), logits.shape[-1]))
        for rows, part in parts:
            out[rows.to(out.device)] = part
        return out

    def _forward(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any]) -> torch.Tensor:
        """One forward pass over rows ``slots``; each row's last logits, in the rows' order."""
        spans = self._segmenter is not None
        layout, counts, positions, plan = self._planner.plan(slots, mask, spans)
        padding = None
        if counts is not None and self._serving.recurrent and not (counts == mask.shape[1]).all():
            padding = in_order(mask, layout.host_index).to(self.device)
        self._cache.plan = plan
        states = self._load_states(layout, counts)
        if counts is None:  # a decode step
            masks = self._decode_masks.masks(
                layout, self._planner.followed, positions, plan.kv_length, self._dtype
            )
        else:
            masks = self._serving.masks(
                positions, plan.kv_length, padding, self._dtype, keys=self._keys
            )
        tokens = in_order(tokens, layout.host_index)
        inputs = {
            "input_ids": tokens if tokens.device == self.device else tokens.to(self.device),
            self._call.cache: self._cache,
            **self._call.extra,
        }
        if self._call.positions:
            inputs["position_ids"] = positions
        segments = None
        if counts is None and self._segmenter is not None:
            host = self._planner.positions(len(layout.slots))
            lanes = layout.lanes if layout.gaps else None
            segments = self._segmenter.segments(layout, host, lanes)
        logits = self._call_model(inputs, masks, segments)[:, -1]
        if states:
            self._states.store(on_device(layout.slots, self.device), states)
        self._planner.advance(layout, counts)  # undone by step() if the step raises
        self._fed = (layout, counts, tokens)
        if layout.index is None:
            return logits
        return torch.empty_like(logits).index_copy_(0, layout.index, logits)

    def _load_states(self, layout: Layout, counts: np.ndarray[Any, Any] | None) -> dict[int, Any]:
        """The recurrent layers' states of ``layout``'s rows, put into the cache's layers."""
        if not self._serving.recurrent:
            return {}
        fresh = bool((self._lengths[layout.slots] == 0).all())
        states = self._states.loaded(on_device(layout.slots, self.device), fresh)
        for layer, state in states.items():
            self._cache.layers[layer] = state
        return states

    def _call_model(
        self, inputs: dict[str, Any], masks: Any, segments: Segments | None = None
    ) -> torch.Tensor:
        scheme = self._serving.alibi
        if segments is not None:
            with selected(self.model.config, segments):
                return self.model(**inputs, attention_mask=masks).logits  # type: ignore[no-any-return]
        if scheme is None:
            return self.model(**inputs, attention_mask=masks).logits  # type: ignore[no-any-return]
        with layer_arguments(self._layers, scheme_arguments(scheme, self.model, masks)):
            return self.model(**inputs, attention_mask=None).logits  # type: ignore[no-any-return]


class _CallArguments:
    """How to hand this model the cache, whether it takes positions, what else to pass."""

    def __init__(self, cache: str, positions: bool, extra: dict[str, Any]) -> None:
        self.cache = cache
        self.positions = positions
        self.extra = extra


def _call_arguments(model: Any) -> _CallArguments:
    parameters = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in parameters else "past_key_values"
    extra: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in parameters:
        extra["logits_to_keep"] = 1
    return _CallArguments(cache, "position_ids" in parameters, extra)


ROW_SPLIT_ELEMENTS = 131072
"""A decode step's rows are split into runs (`_row_attention`) where a split saves more than
this many key and value elements per row and layer (see ``benchmarks/row_attention.py``)."""


def _segmenter(model: Any, alibi: str | None) -> Segmenter | None:
    """Per-run decode attention for a model that attends with ``sdpa``; None for any other."""
    config = model.config
    if alibi is not None or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    heads = getattr(config, "num_attention_heads", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", heads) // heads
    return Segmenter(max(1, ROW_SPLIT_ELEMENTS // (2 * kv_heads * head_dim)))


def _decoder_layers(model: Any) -> list[torch.nn.Module]:
    try:
        return decoder_layers(model)
    except LookupError as exc:
        raise ConfigurationError(f"cannot serve {type(model).__name__}: {exc}") from exc


def _optional_bytes(value: object) -> int | None:
    return None if value is None else check_count(value, "kv_cache_bytes")


def _check_model(model: Any, max_length: int) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "parameters"):
        raise ConfigurationError(f"expected a transformers causal LM, got {type(model).__name__}")
    if getattr(model, "training", False):
        raise ConfigurationError("the model is in training mode: call model.eval() first")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigurationError(
            f"max_length must be a positive int, got {describe_value(max_length)}"
        )
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigurationError(
            f"max_length={max_length} is more than the model's {limit} positions"
        )


_NO_TOKEN = -1  # the stop token when there is none: no model produces it


def _check_settings(settings: Sampling, max_new_tokens: int, vocabulary: int | None) -> None:
    """InvalidRequest for settings this model or request cannot honour."""
    if settings.min_tokens > max_new_tokens:
        raise InvalidRequest(
            f"option min_tokens must be at most max_new_tokens={max_new_tokens}, "
            f"got {settings.min_tokens}"
        )
    if vocabulary is not None:
        outside = [token for token in settings.logit_bias if token >= vocabulary]
        if outside:
            raise InvalidRequest(
                f"option logit_bias has token id {describe_value(outside[0])}, outside the "
                f"model's vocabulary [0, {vocabulary})"
            )


def _first_given(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def _token_id(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"{name} must be a token id (an int >= 0), got {describe_value(value)}"
        )
    return value


def _take(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return tensor.index_select(0, rows.to(tensor.device))
