"""Adapters that let hibachi serve models of other libraries.

Each lives in its own submodule and imports its library only when imported:

- `hibachi.integrations.transformers`: Hugging Face causal LMs, with a KV cache.
- `hibachi.integrations.ray`: one batcher per Ray Serve replica, many replicas.
"""
