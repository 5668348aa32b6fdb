"""The generation workloads' model: a small random-weight Llama (transformers' code)."""

from __future__ import annotations

from typing import Any

from ..settings import GenerationSize

__all__ = ["PAD", "build_llama", "eos_of", "parameters"]

PAD = 0


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
