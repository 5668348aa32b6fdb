"""`ServeSettings`: how the server batches, bounds and ends its requests."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """The server's knobs; every one has a default that works.

    Args:
        max_batch_size: rows per generation step, and texts per embedding call.
        max_queue_size: requests that may wait per batcher; beyond, 429.
        max_length: the most tokens (prompt and completion) one sequence holds;
            None: the model's context (its ``max_position_embeddings``).
        kv_cache_bytes: the most memory the keys and values of all sequences may
            take (``causal_lm_batcher``'s); None: half the memory available.
        default_max_tokens: the budget of a ``/v1/completions`` request that
            names none (OpenAI's default, 16). A chat completion that names
            none runs until it stops or fills ``max_length``, as OpenAI's does.
        stuck_after: ``/health`` answers 503 once a model call has run this long.
        shutdown_grace: seconds in-flight requests get to finish after SIGINT /
            SIGTERM; the rest then end with an error event.
        drain_window: seconds of finished requests the drain rate (and so
            ``Retry-After``) is measured over.
        stream_interval: a streamed response sends one chunk per this many
            pieces of text (tokens, roughly); the first piece always goes at
            once. More than 1 costs the server and its clients less per token.
    """

    max_batch_size: int = 32
    max_queue_size: int = 1024
    max_length: int | None = None
    kv_cache_bytes: int | None = None
    default_max_tokens: int = 16
    stuck_after: float = 30.0
    shutdown_grace: float = 10.0
    drain_window: float = 10.0
    stream_interval: int = 1
