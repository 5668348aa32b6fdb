"""Tiny random-weight models of many transformers architectures, built locally (nothing downloaded).

`tiny_model(model_type, **overrides)` builds the ``…ForCausalLM`` that
transformers maps ``model_type`` to, from its config class with every size
shrunk (hidden 32, 2 layers, vocabulary 97…), in float64 unless asked
otherwise, on `DEVICE`. `reference` is ``model.generate()`` greedy on one
prompt alone.

`DEVICE` is ``$HIBACHI_TEST_DEVICE`` (default "cpu"): ``HIBACHI_TEST_DEVICE=cuda``
runs the zoo's models on a GPU (scripts/gpu-check.sh), their prompts and tokens
staying on the CPU as the batcher's callers hand them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

DEVICE = os.environ.get("HIBACHI_TEST_DEVICE", "cpu")
VOCAB = 97
EOS = 5
WINDOW = 8  # every sliding window: shorter than most sequences of the zoo

SMALL: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": EOS,
    "pad_token_id": 0,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "sliding_window": WINDOW,
    "state_size": 8,
    "expand": 2,
    "d_model": 32,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 256,
    "n_layers": 2,
    "n_heads": 4,
    "max_seq_len": 256,
    "ffn_hidden_size": 64,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "layer_types": None,
}


# Sizes a family's config checks against each other, or layouts that show its kinds of layer
OVERRIDES: dict[str, dict[str, Any]] = {
    "mamba2": {"num_heads": 8, "head_dim": 8, "n_groups": 1, "expand": 2},
    "codegen": {"rotary_dim": 4},
    "gptj": {"rotary_dim": 4},
    **{  # multi-head latent attention: as many key/value heads as query heads
        name: {"num_key_value_heads": 4}
        for name in ("axk1", "deepseek_v2", "deepseek_v3", "glm4_moe_lite", "minicpm3", "youtu")
    },
    "gpt_neo": {"num_layers": 2, "attention_types": [[["global", "local"], 1]]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2},
    # two linear-attention layers alone make generate() itself fail (no attention cache to measure)
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
}


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """``model_type``'s config with the `SMALL` sizes it has fields for, then ``overrides``."""
    cls = CONFIG_MAPPING[model_type]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    settings = {k: v for k, v in SMALL.items() if k in fields}
    return cls(**{**settings, **overrides})


def tiny_model(model_type: str, dtype: torch.dtype = torch.float64, **overrides: Any) -> Any:
    """A random-weight ``…ForCausalLM`` of ``model_type`` in eval mode (seeded: always the
    same), on `DEVICE`."""
    config = tiny_config(model_type, **overrides)
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    torch.manual_seed(0)
    return cls(config).to(dtype).to(DEVICE).eval()


def reference(model: Any, prompt: torch.Tensor, budget: int, eos: int | None) -> list[int]:
    """Greedy ``model.generate()`` on ``prompt`` alone (on the model's device)."""
    prompt = prompt.to(model.device)
    out = model.generate(
        prompt[None],
        attention_mask=torch.ones_like(prompt)[None],
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, prompt.shape[0] :]]


# -- the architectures served, as test parameters ------------------------------------------

F32 = {"dtype": torch.float32}  # expert kernels (grouped_mm) without a float64 version
HYBRID = {"layer_types": ["sliding_attention", "full_attention"]}


def served(model_type: str, id: str | None = None, **settings: Any) -> Any:
    return pytest.param(model_type, settings, id=id or model_type)


SERVED = [
    # full attention: learned, rotary and partial-rotary positions
    served("gpt2"),
    served("llama"),
    served("qwen3"),
    served("gemma"),
    served("phi"),
    served("gpt_neox"),
    served("opt"),
    served("gpt_bigcode"),
    served("stablelm"),
    served("olmo2"),
    served("granite"),
    served("cohere"),
    # sliding windows (8 tokens), on every layer or alternating with full attention
    served("mistral"),
    served("starcoder2"),
    served("phi3"),
    served("qwen2", id="qwen2-sliding", use_sliding_window=True, max_window_layers=1),
    served("gemma2"),
    served("gemma3_text", **HYBRID),
    served("cohere2", **HYBRID),
    # ALiBi
    served("bloom"),
    served("mpt"),
    served("falcon", id="falcon-alibi", alibi=True),
    served("falcon", id="falcon-rotary"),
    # mixture of experts, in float32
    served("mixtral", **F32),
    served("qwen2_moe", **F32),
    served("qwen3_moe", **F32),
    served("olmoe", **F32),
    served("deepseek_v3", num_key_value_heads=4, **F32),  # and multi-head latent attention
    # recurrent state: Mamba, Mamba 2, and Jamba's Mamba layers beside attention (and experts)
    served("mamba"),
    served("mamba2", num_heads=8, head_dim=8, n_groups=1),
    served("falcon_mamba"),
    served("jamba", attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, **F32),
    served("olmo_hybrid"),  # linear attention (gated delta rule) beside full attention
    served("lfm2", layer_types=["conv", "full_attention"]),  # short convolutions
    served("qwen3_next", layer_types=["linear_attention", "full_attention"], **F32),
]
