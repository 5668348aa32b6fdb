"""`ServeSettings`: how the server batches, bounds and ends its requests, and who may call it.

Related knobs come grouped in value types, as httpx groups its ``Timeout``
and ``Limits``: `RequestLimits` (what one request may ask for),
`ConnectionLimits` (how long and how many connections may stay open) and
`Access` (keys, host names, the API docs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Access", "ConnectionLimits", "RequestLimits", "ServeSettings"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry; beyond, 413 (the body) or a 400 naming the limit.

    Args:
        max_request_bytes: the body's size; a larger one is refused with 413
            before it is read (by its ``Content-Length``) or as soon as it
            passes the limit (a chunked body).
        max_input_chars: characters of text in one request: a completion's
            prompt, a chat's messages together, an embedding request's inputs
            together.
        max_stop_strings: stop strings per request (each at most
            ``max_stop_chars`` characters).
        max_stop_chars: characters per stop string.
        max_embedding_inputs: inputs per embedding request (OpenAI's 2,048).
        max_logit_bias: entries in a request's ``logit_bias``.
    """

    max_request_bytes: int = 4 * 1024 * 1024
    max_input_chars: int = 1024 * 1024
    max_stop_strings: int = 16
    max_stop_chars: int = 256
    max_embedding_inputs: int = 2048
    max_logit_bias: int = 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """How slow or idle clients are kept from holding the server (seconds and counts).

    Args:
        max_connections: open connections; one more is answered 503 and closed.
        max_header_bytes: a request head's size (its line and headers);
            past it, 431 and closed.
        header_timeout: from a connection's opening (or its last response) to
            the end of the next request's headers; past it, 408 and closed.
        body_timeout: from the end of a request's headers to the end of its
            body; past it, 408 and closed.
        keep_alive_timeout: an idle connection between requests is closed
            after this long.
        write_timeout: a client that takes none of its answer for this long
            (its socket full) is dropped, its request cancelled.
        max_buffered_bytes: the bodies of all the requests in flight
            together; a body that would pass it is answered 503.

    ``body_timeout`` is the app's own; the others need the server of
    `hibachi.serve.server_for` / `run` (under Ray Serve its proxy holds the
    connections).
    """

    max_connections: int = 1024
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    write_timeout: float = 30.0
    max_buffered_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class Access:
    """Who may call the server, under which host names, and what it shows.

    Args:
        api_keys: with any, every ``/v1/*`` route asks for ``Authorization:
            Bearer <one of them>`` (401 otherwise). Never shown in a repr.
        protect_all: the keys guard every route, ``/health`` and ``/metrics``
            (and the docs) included.
        allowed_hosts: the host names a request's ``Host`` header may name
            (400 otherwise); ``"*"`` for any. None: the loopback names when
            `server_for` binds a loopback address, else any.
        docs: serve ``/docs``, ``/redoc`` and ``/openapi.json``.
    """

    api_keys: tuple[str, ...] = field(default=(), repr=False)
    protect_all: bool = False
    allowed_hosts: tuple[str, ...] | None = None
    docs: bool = False


@dataclass(frozen=True)
class ServeSettings:
    """The server's knobs; every one has a default that works.

    Args:
        max_batch_size: rows per generation step, and texts per embedding call.
        max_queue_size: requests that may wait per batcher; beyond, 429. An
            embedding request is admitted whole while fewer than this many
            inputs wait.
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
        limits: what one request may carry (`RequestLimits`).
        connections: slow and idle connections (`ConnectionLimits`).
        access: keys, host names, docs (`Access`).
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
    limits: RequestLimits = field(default_factory=RequestLimits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    access: Access = field(default_factory=Access)
