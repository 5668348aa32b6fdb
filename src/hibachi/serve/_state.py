"""`ServerState`: the engines an app owns, and its shutdown.

The app's lifespan (`ServerState.running`) builds and opens the batchers
and closes them at the end. `begin_shutdown` (the signal handler's, from any
thread) stops admitting and gives in-flight requests ``shutdown_grace``
seconds; the generations still running then end with an error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

from ._engines import EmbeddingEngine, LanguageEngine
from ._errors import APIError
from ._generation import Generation
from ._metrics import Metrics
from ._models import EmbeddingModel, LanguageModel
from ._settings import ServeSettings

__all__ = ["ServerState"]

Engine = TypeVar("Engine", LanguageEngine, EmbeddingEngine)


class ServerState:
    """What one app serves with: settings, metrics, engines, live generations."""

    def __init__(
        self,
        settings: ServeSettings,
        language_model: LanguageModel | None,
        embedding_model: EmbeddingModel | None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.created = int(time.time())
        self.language: LanguageEngine | None = None
        self.embedder: EmbeddingEngine | None = None
        self.live: set[Generation] = set()
        self.draining = False
        # the Host names allowed (None: any), in a list `server_for` may narrow once it
        # knows the address it binds (the front door reads it on every request)
        self.allowed_hosts: list[tuple[str, ...] | None] = [settings.access.allowed_hosts]
        self._models = (language_model, embedding_model)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open a batcher per model; close them (ending what is left) on the way out."""
        self._loop = asyncio.get_running_loop()
        language_model, embedding_model = self._models
        async with AsyncExitStack() as stack:
            if language_model is not None:
                self.language = LanguageEngine(language_model, self.settings, self.metrics)
                stack.push_async_callback(self.language.batcher.aclose, cancel=True)
                self.language.batcher.start()
            if embedding_model is not None:
                self.embedder = EmbeddingEngine(embedding_model, self.settings, self.metrics)
                stack.push_async_callback(self.embedder.batcher.aclose, cancel=True)
                self.embedder.batcher.start()
            try:
                yield
            finally:
                if self._expiry is not None:
                    self._expiry.cancel()

    def begin_shutdown(self, grace: float | None = None) -> None:
        """Stop admitting; end the generations still running after ``grace`` seconds.

        Safe from any thread and from a signal handler; idempotent.
        """
        if self.draining:
            return
        self.draining = True
        seconds = self.settings.shutdown_grace if grace is None else grace
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arm_expiry, seconds)

    def _arm_expiry(self, grace: float) -> None:
        assert self._loop is not None
        self._expiry = self._loop.call_later(grace, self._interrupt_all)

    def _interrupt_all(self) -> None:
        for generation in list(self.live):
            generation.interrupt()

    def language_for(self, model: str | None) -> LanguageEngine:
        """The language engine a request names (404 if another), if admitting (503)."""
        return self._engine_for(self.language, model, "language")

    def embedder_for(self, model: str | None) -> EmbeddingEngine:
        """The embedding engine a request names (404 if another), if admitting (503)."""
        return self._engine_for(self.embedder, model, "embedding")

    def _engine_for(self, engine: Engine | None, model: str | None, kind: str) -> Engine:
        self._check_admitting()
        if engine is None:
            raise APIError(
                404, f"this server serves no {kind} model", param="model", code="model_not_found"
            )
        _check_name(model, engine.name)
        return engine

    def _check_admitting(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", kind="server_error", code="shutdown")

    def model_names(self) -> list[str]:
        return [e.name for e in (self.language, self.embedder) if e is not None]


def _check_name(model: str | None, served: str) -> None:
    if model is not None and model != served:
        raise APIError(
            404,
            f"model {_shown(model)} is not served here; this server serves {served!r}",
            param="model",
            code="model_not_found",
        )


def _shown(name: str) -> str:
    """``name`` as an error message quotes it: at most 100 characters of it."""
    return repr(name) if len(name) <= 100 else f"{name[:100]!r}..."
