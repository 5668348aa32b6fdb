"""Per-slot recurrent state for Mamba-style layers (conv and SSM states), allocated once.

A recurrent layer keeps, for each sequence, a convolution state (the last few
inputs) and an SSM state, instead of keys and values. `RecurrentSlots` holds
them for every slot in tensors of shape (slots, …), created at the first
forward pass that produces them and written in place ever after; a released
slot's states are zeroed.

transformers' recurrent layers read their states from ``LinearAttentionLayer``
cache layers. For each forward pass `loaded` builds such layers holding the
pass's rows' states (or none, for rows that start afresh), and `store` writes
what the pass left in them back to the rows' slots.

transformers' layers step a sequence from a state one token at a time only
(a multi-token pass always starts from a zero state, as a prompt does), so
the adapter feeds a recurrent model fresh rows together, then continuing rows
one column at a time: see ``CausalLMAdapter``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import LinearAttentionLayer

__all__ = ["RecurrentSlots"]

_States = dict[tuple[int, int], torch.Tensor]  # (layer, state index) -> (slots, ...)


class RecurrentSlots:
    """The conv and recurrent states of layers ``layers`` for ``slots`` sequences."""

    def __init__(self, slots: int, layers: list[int], states_per_layer: int = 1) -> None:
        self.slots = slots
        self.layers = layers
        self.states_per_layer = states_per_layer
        self._conv: _States = {}
        self._recurrent: _States = {}

    def loaded(self, slots: torch.Tensor, fresh: bool) -> dict[int, LinearAttentionLayer]:
        """Cache layers holding ``slots``' states (empty ones if ``fresh``), by layer index."""
        layers = {}
        for index in self.layers:
            layer = LinearAttentionLayer(number_of_states=self.states_per_layer)
            if not fresh:
                for state in range(self.states_per_layer):
                    self._load(layer, (index, state), slots)
            layers[index] = layer
        return layers

    def store(self, slots: torch.Tensor, layers: dict[int, LinearAttentionLayer]) -> None:
        """Write the states a forward pass left in ``layers`` back to ``slots``."""
        for index, layer in layers.items():
            for state in range(self.states_per_layer):
                key = (index, state)
                _scatter(self._conv, key, slots, layer.conv_states[state], self.slots)
                _scatter(self._recurrent, key, slots, layer.recurrent_states[state], self.slots)

    def save(self, slots: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A copy of ``slots``' states, for `restore`."""
        kept = [*self._conv.values(), *self._recurrent.values()]
        return [(tensor, slots, tensor.index_select(0, slots)) for tensor in kept]

    def restore(self, saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Put back the states `save` copied."""
        for tensor, slots, rows in saved:
            tensor.index_copy_(0, slots, rows)

    def reset(self, slot: int) -> None:
        """Zero ``slot``'s states: its sequence has ended."""
        for states in (self._conv, self._recurrent):
            for tensor in states.values():
                tensor[slot].zero_()

    def _load(self, layer: LinearAttentionLayer, key: tuple[int, int], slots: torch.Tensor) -> None:
        state = key[1]
        conv = self._conv.get(key)
        if conv is not None:
            rows = conv.index_select(0, slots)
            layer.conv_states[state] = rows
            layer.conv_kernel_size[state] = rows.shape[-1]
            layer.is_conv_states_initialized[state] = True
            layer.dtype, layer.device = rows.dtype, rows.device  # type: ignore[assignment]
        recurrent = self._recurrent.get(key)
        if recurrent is not None:
            layer.recurrent_states[state] = recurrent.index_select(0, slots)
            layer.is_recurrent_states_initialized[state] = True
        layer.has_previous_state[state] = conv is not None or recurrent is not None


def _scatter(
    states: _States,
    key: tuple[int, int],
    slots: torch.Tensor,
    rows: torch.Tensor | None,
    count: int,
) -> None:
    if rows is None:
        return
    if key not in states:
        states[key] = rows.new_zeros((count, *rows.shape[1:]))
    states[key].index_copy_(0, slots, rows)
