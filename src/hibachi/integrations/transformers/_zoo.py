"""The model types hibachi serves exactly, and those it refuses with a known reason.

``SERVED``: every ``…ForCausalLM`` model type that has given, through
``causal_lm_batcher``, exactly the tokens of ``model.generate()`` on each
prompt alone (tiny random configs, greedy; float64, or float32 where the
model's expert kernels have no float64 version), under continuous batching
with prompts longer than the sliding window. ``tests/integrations/transformers/test_zoo.py``
checks a zoo of them in CI; ``scripts/zoo_sweep.py`` checks them all.

``REFUSED``: model types refused with a known reason. Any other model type is
refused too, as not checked: a batcher must never serve wrong tokens.
"""

from __future__ import annotations

__all__ = ["REFUSED", "SERVED"]

SERVED: frozenset[str] = frozenset(
    {
        # dense decoders, full attention (absolute, rotary or learned positions)
        "apertus", "apertus1p5_text", "arcee", "biogpt", "bitnet", "cohere", "ctrl", "cwm",
        "diffllama", "doge", "ernie4_5", "exaone", "exaone4", "flint", "gemma", "glm", "glm4",
        "gpt-sw3", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gpt_neox_japanese", "granite",
        "helium", "hrm_text", "hunyuan_v1_dense", "hyperclovax", "internlm3", "iquestcoder",
        "jais2", "llama", "modernbert-decoder", "nanochat", "nemotron", "olmo", "olmo2", "olmo3",
        "opt", "persimmon", "phi", "qwen2", "qwen3", "seed_oss", "smollm3", "stablelm",
        "beam", "codegen", "git", "gptj", "mellum",
        # multi-head latent attention
        "deepseek_v2", "deepseek_v3", "minicpm3",
        # sliding-window attention, on every layer or on some (hybrid)
        "cohere2", "gemma2", "gemma3_text", "gemma4_text", "gemma4_unified_text",
        "granite_swa", "ministral", "ministral3", "mistral", "phi3", "starcoder2", "vaultgemma",
        # ALiBi
        "bloom", "falcon", "mpt",
        # mixture of experts (float32: their grouped expert kernels have no float64 version)
        "afmoe", "aria_text", "cohere2_moe", "ernie4_5_moe", "exaone_moe", "flex_olmo",
        "glm4_moe", "gpt_oss", "granitemoe", "granitemoe_swa", "granitemoeshared",
        "hunyuan_v1_moe", "jetmoe", "mixtral", "olmoe", "phimoe", "qwen2_moe", "qwen3_moe",
        "hy_v3", "kolibri1", "laguna", "mimo_v2_flash", "minimax_m2", "minimax_m3_vl_text",
        "sarvam_moe", "solar_open",
        # recurrent state (Mamba-style, short convolutions, linear attention), alone or beside
        # attention
        "falcon_mamba", "jamba", "lara_mini", "lfm2", "lfm3", "mamba", "mamba2", "olmo_hybrid",
        "qwen3_next",
    }
)  # fmt: skip

_ENCODER = (
    "an encoder (masked-LM) family: its …ForCausalLM attends both ways unless "
    "is_decoder=True, and has not been checked as a decoder"
)
_SEQ2SEQ = (
    "the decoder of an encoder-decoder family: it places its positions by the cache's length, "
    "not by each row's position"
)

REFUSED: dict[str, str] = {
    **dict.fromkeys(
        [
            "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra",
            "ernie", "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roc_bert",
            "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod",
        ],
        _ENCODER,
    ),
    **dict.fromkeys(
        [
            "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart",
            "mvp", "pegasus", "plbart", "prophetnet", "trocr", "whisper",
        ],
        _SEQ2SEQ,
    ),
    "rwkv": "RWKV keeps its recurrent state in its own format, not in transformers' cache",
    "xlstm": "xLSTM keeps its recurrent state in its own format, not in transformers' cache",
    "reformer": "Reformer's chunked, hashed attention has no per-row mask",
    "xlnet": "XLNet is a permutation LM with relative positions, not a causal LM",
    "moshi": "Moshi is a speech model whose depth decoder has its own cache",
}  # fmt: skip
