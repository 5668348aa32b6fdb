"""The generation workloads' model and requests: a small random-weight Llama.

Also hibachi's fallback for when `hibachi.integrations.transformers` is not
installed: the stateless `AutoregressiveBatcher` over a wrapper that runs the
whole sequence every step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .settings import GenerationSize

__all__ = [
    "FullForward",
    "LlmRequest",
    "build_llama",
    "hibachi_label",
    "make_requests",
    "stateless_batcher",
    "trim",
    "uses_fallback",
]

PAD = 0


@dataclass(frozen=True)
class LlmRequest:
    """One client's prompt (token ids) and budget of new tokens."""

    prompt: list[int]
    budget: int


def build_llama(size: GenerationSize, device: str, seed: int) -> Any:
    """A float32 Llama with random weights, in eval mode, on ``device``; greedy by default.

    ``initializer_range`` is larger than a trained model's so that logits are
    spread out: greedy argmax then does not flip on float rounding, and
    "same tokens as generate()" checks batching rather than luck.
    """
    import torch

    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 3,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=4096,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=eos_of(size),
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(device).eval()
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, eos_token_id=eos_of(size), pad_token_id=PAD, bos_token_id=1
    )
    _warm_up(model, device)
    return model


def _transformers() -> Any:
    import transformers

    return transformers


def eos_of(size: GenerationSize) -> int:
    return size.vocab - 1


def parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _warm_up(model: Any, device: str) -> None:
    import torch

    ids = torch.arange(2, 10, device=device).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a padded row too: the first padded batch pays a one-off cost
    model.generate(ids, attention_mask=mask, max_new_tokens=2)
    model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=2)


def make_requests(
    count: int, lengths: tuple[int, int], budgets: tuple[int, int], vocab: int, seed: int
) -> list[LlmRequest]:
    """``count`` requests with lengths and budgets drawn uniformly from the given ranges."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        prompt = rng.integers(2, vocab - 1, size=length).tolist()
        requests.append(LlmRequest(prompt, int(rng.integers(budgets[0], budgets[1] + 1))))
    return requests


def trim(tokens: list[int], budget: int, eos: int) -> list[int]:
    """What a caller receives: at most ``budget`` tokens, ending at the first ``eos``."""
    tokens = tokens[:budget]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


class FullForward:
    """hibachi's stateless model contract over a transformers causal LM.

    Every step runs the whole left-padded batch and returns the argmax of the
    last position. Positions are counted from each row's first real token, so
    a padded row gets exactly what it gets alone.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, tokens: Any, mask: Any) -> Any:
        import torch

        with torch.inference_mode():
            attention = mask.long()
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                input_ids=tokens, attention_mask=attention, position_ids=positions, use_cache=False
            )
            return out.logits[:, -1].argmax(-1)


def stateless_batcher(model: Any, *, batch_size: int, eos: int, device: str) -> Any:
    """An unopened `AutoregressiveBatcher` over `FullForward`: no KV cache, every step in full."""
    import torch

    from hibachi import AutoregressiveBatcher

    return AutoregressiveBatcher(
        FullForward(model),
        stop_token=torch.tensor(eos, device=device),
        pad_value=torch.tensor(PAD, device=device),
        max_batch_size=batch_size,
    )


def hibachi_label() -> str:
    return "hibachi (stateless)" if uses_fallback() else "hibachi (KV cache)"


def uses_fallback() -> bool:
    """Whether `hibachi_batcher` falls back to the stateless batcher."""
    try:
        importlib.import_module("hibachi.integrations.transformers")
    except ImportError:
        return True
    return False
