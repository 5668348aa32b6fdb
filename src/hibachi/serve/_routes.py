"""The endpoints: OpenAI's shapes, so the official ``openai`` client works unchanged."""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .._exceptions import Timeout
from ._chunks import chat_chunks, completion_chunks, usage_of, wants_usage
from ._engines import EmbeddingEngine, LanguageEngine
from ._errors import APIError, ClientGone
from ._generation import Generation
from ._metrics import Reason
from ._requests import chat_ids, deadline, generation_params, prompt_ids
from ._schemas import (
    ChatChoice,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    Usage,
)
from ._sse import EventStream, until_gone
from ._state import ServerState

__all__ = ["router"]

router = APIRouter()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.hibachi
    return state


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    state = _state(request)
    return ModelList(data=[ModelCard(id=n, created=state.created) for n in state.model_names()])


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Completion | EventStream:
    return await _generate(request, body, _COMPLETIONS)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion | EventStream:
    return await _generate(request, body, _CHAT)


Body = TypeVar("Body", CompletionRequest, ChatRequest)
Answer = TypeVar("Answer", Completion, ChatCompletion)


@dataclass(frozen=True)
class _Endpoint(Generic[Body, Answer]):
    """What a generating endpoint does its own way: the prompt's ids, the response's id
    prefix, its stream of chunks, and its whole answer."""

    ids: Callable[[LanguageEngine, Body], list[int]]
    prefix: str
    chunks: Callable[[Generation, str, int, bool], AsyncIterator[str]]
    answer: Callable[[Generation, str, str, int], Answer]


async def _generate(
    request: Request, body: Body, endpoint: _Endpoint[Body, Answer]
) -> Answer | EventStream:
    """One completion or chat completion, from the request's body to its answer or stream."""
    arrived = time.monotonic()
    state = _state(request)
    engine = state.language_for(body.model)
    ids = endpoint.ids(engine, body)
    params = generation_params(body, ids, engine, deadline(request, body.timeout))
    generation = Generation(engine, params, arrived=arrived, live=state.live)
    generation.start()
    ident, created = f"{endpoint.prefix}-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return EventStream(endpoint.chunks(generation, ident, created, wants_usage(body)))
    text = await until_gone(request, generation.text())
    return endpoint.answer(generation, text, ident, created)


def _completion(generation: Generation, text: str, ident: str, created: int) -> Completion:
    choice = CompletionChoice(text=text, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    model, usage = generation.engine.name, usage_of(generation)
    return Completion(id=ident, created=created, model=model, choices=[choice], usage=usage)


def _chat_completion(generation: Generation, text: str, ident: str, created: int) -> ChatCompletion:
    message = ChatMessage(role="assistant", content=text)
    choice = ChatChoice(message=message, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    model, usage = generation.engine.name, usage_of(generation)
    return ChatCompletion(id=ident, created=created, model=model, choices=[choice], usage=usage)


_COMPLETIONS = _Endpoint[CompletionRequest, Completion](
    ids=lambda engine, body: prompt_ids(engine, body.prompt),
    prefix="cmpl",
    chunks=completion_chunks,
    answer=_completion,
)
_CHAT = _Endpoint[ChatRequest, ChatCompletion](
    ids=lambda engine, body: chat_ids(engine, body.messages),
    prefix="chatcmpl",
    chunks=chat_chunks,
    answer=_chat_completion,
)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    arrived = time.monotonic()
    state = _state(request)
    engine = state.embedder_for(body.model)
    items = _embedding_items(engine, body.input)
    timeout = deadline(request, body.timeout)
    reason: Reason = "failed"
    try:
        vectors = await until_gone(request, engine.embed(items, timeout))
        reason = "finished"
    except APIError:
        reason = "refused"
        raise
    except Timeout:
        reason = "timed_out"
        raise
    except ClientGone:
        reason = "cancelled"
        raise
    finally:
        state.metrics.end(engine.name, reason)
        if reason != "refused":
            state.metrics.e2e.labels(engine.name).observe(time.monotonic() - arrived)
    tokens = sum(int(item["input_ids"].shape[0]) for item in items)
    data = [
        Embedding(index=i, embedding=_encoded(v, body.encoding_format))
        for i, v in enumerate(vectors)
    ]
    return EmbeddingList(
        data=data, model=engine.name, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _embedding_items(engine: EmbeddingEngine, given: Any) -> list[Any]:
    if isinstance(given, str):
        return engine.items([given], None)
    if not given:
        raise APIError(400, "input: no input to embed", param="input")
    if all(isinstance(x, str) for x in given):
        return engine.items(given, None)
    rows = [given] if all(isinstance(x, int) for x in given) else given
    for row in rows:
        if not row or not all(0 <= x < engine.vocab_size for x in row):
            raise APIError(
                400, "input: token ids must be non-empty and inside the vocabulary", param="input"
            )
    return engine.items(None, rows)


def _encoded(vector: Any, encoding: str) -> list[float] | str:
    array = np.asarray(vector, dtype=np.float32)
    if encoding == "base64":
        return base64.b64encode(array.tobytes()).decode()
    values: list[float] = array.tolist()
    return values


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = _state(request)
    stuck_after = state.settings.stuck_after
    engines = [e for e in (state.language, state.embedder) if e is not None]
    reports = {e.name: e.batcher.health() for e in engines}
    ok = (
        bool(reports)
        and not state.draining
        and all(h.ok(stuck_after=stuck_after) for h in reports.values())
    )
    body = {
        "status": "ok" if ok else "unavailable",
        "draining": state.draining,
        "models": {name: dataclasses.asdict(h) for name, h in reports.items()},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
