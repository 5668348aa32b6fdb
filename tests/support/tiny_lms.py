"""Tiny random-weight GPT-2 and Llama models in float64; greedy ``generate()`` is the reference."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from support.zoo_models import EOS, VOCAB

__all__ = ["EOS", "VOCAB", "generate", "tiny_gpt2", "tiny_llama"]


def tiny_llama() -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def tiny_gpt2() -> Any:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def generate(model: Any, prompt: Any, budget: int) -> list[int]:
    """Greedy ``generate()`` on ``prompt`` alone: the reference."""
    out = model.generate(
        prompt[None],
        attention_mask=torch.ones_like(prompt)[None],
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, prompt.shape[0] :]]
