"""Serving a Hugging Face transformers causal LM to many concurrent callers.

```python
from hibachi.integrations.transformers import causal_lm_batcher

async with causal_lm_batcher(model, max_batch_size=16, max_length=1024,
                             eos_token_id=tok.eos_token_id) as batcher:
    async for token_id in batcher.run(torch.tensor(prompt_ids), max_new_tokens=64,
                                      options={"temperature": 0.7, "top_p": 0.9, "seed": 1}):
        ...
```

The model runs incrementally (see `hibachi.IncrementalModel`) over a key/value
cache of ``max_batch_size`` slots of ``max_length`` tokens, allocated once and
reused slot by slot. Prompts and tokens are tensors of token ids on the CPU
(or the batcher's ``device``), whatever device the model is on.

Exact or refused: a model is served only if its family has been checked to
give ``model.generate()``'s greedy tokens exactly (full attention, sliding
windows, ALiBi, mixtures of experts, Mamba-style recurrent layers: see
``_zoo.SERVED`` and docs/transformers.md); any other is refused when the batcher
is built, with a `ConfigurationError` that says why. Sliding-window layers
keep the whole sequence in the slot cache and mask the keys outside each
row's window. Recurrent layers keep one conv and one SSM state per slot.
Attention must be ``sdpa`` or ``eager``.
"""

from __future__ import annotations

from ._adapter import CausalLMAdapter as CausalLMAdapter
from ._adapter import Sampling as Sampling
from ._adapter import causal_lm_batcher as causal_lm_batcher

__all__ = [
    "CausalLMAdapter",
    "Sampling",
    "causal_lm_batcher",
]
