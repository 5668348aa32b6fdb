"""`create_app`: the ASGI app, its lifespan owning the batchers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from . import _errors
from ._gate import Gate
from ._models import EmbeddingModel, LanguageModel
from ._routes import router
from ._settings import ServeSettings
from ._state import ServerState

__all__ = ["create_app"]


def create_app(
    language_model: LanguageModel | None = None,
    embedding_model: EmbeddingModel | None = None,
    *,
    settings: ServeSettings | None = None,
) -> FastAPI:
    """The OpenAI-compatible ASGI app serving ``language_model`` and ``embedding_model``.

    Completions and chat completions go to an `AutoregressiveBatcher` over the
    language model (with a KV cache); embeddings to a `FeedforwardBatcher`
    over the embedding model. Either may be None (its endpoints then answer
    404). The app's lifespan opens the batchers and closes them (waiting for
    their threads); an app mounted inside another must have its lifespan run
    by its host.

    Every request passes the front door first (`hibachi.serve._gate`): host
    names, API keys, body type and size, as ``settings`` say. ``/docs``,
    ``/redoc`` and ``/openapi.json`` exist only with ``settings.access.docs``.
    """
    settings = settings or ServeSettings()
    state = ServerState(settings, language_model, embedding_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with state.running():
            yield

    docs = settings.access.docs
    app = FastAPI(
        title="hibachi",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.hibachi = state
    _errors.install(app)
    app.include_router(router)
    app.add_middleware(Gate, settings=settings, hosts=state.allowed_hosts)
    return app
