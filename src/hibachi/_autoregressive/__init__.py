"""The autoregressive batcher: continuous batching of token streams, stateless or
with per-slot state (`IncrementalModel`), around the synchronous `scheduler`.

Entry module: `batcher` (`AutoregressiveBatcher`).
"""
