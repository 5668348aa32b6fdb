"""The endpoints: OpenAI's shapes, so the official ``openai`` client works unchanged."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .._exceptions import Timeout
from ._bodies import ChatRequest, CompletionRequest, EmbeddingRequest
from ._chunks import chat_chunks, completion_chunks, usage_of, wants_usage
from ._embeddings import embedding_response
from ._engines import LanguageEngine
from ._errors import APIError, ClientGone
from ._generation import Generation
from ._metrics import Reason
from ._requests import chat_ids, deadline, generation_params, parse, prompt_ids
from ._schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    ModelCard,
    ModelList,
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


@router.get("/v1/models/{model:path}")
async def model(model: str, request: Request) -> ModelCard:
    state = _state(request)
    if model not in state.model_names():
        message = f"model {model[:100]!r} is not served here"
        raise APIError(404, message, param="model", code="model_not_found")
    return ModelCard(id=model, created=state.created)


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    return await _generate(request, _COMPLETIONS)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    return await _generate(request, _CHAT)


Body = TypeVar("Body", CompletionRequest, ChatRequest)
Answer = TypeVar("Answer", Completion, ChatCompletion)


@dataclass(frozen=True)
class _Endpoint(Generic[Body, Answer]):
    """What a generating endpoint does its own way: its body, the prompt's ids, the
    response's id prefix, its stream of chunks, and its whole answer."""

    body: type[Body]
    ids: Callable[[LanguageEngine, Body], Awaitable[list[int]]]
    prefix: str
    chunks: Callable[[Generation, str, int, bool], AsyncIterator[str]]
    answer: Callable[[Generation, str, str, int], Answer]


async def _generate(request: Request, endpoint: _Endpoint[Body, Answer]) -> Response:
    """One completion or chat completion, from the request's body to its answer or stream."""
    arrived = time.monotonic()
    state = _state(request)
    body = await parse(request, endpoint.body, state.settings.limits)
    engine = state.language_for(body.model)
    ids = await endpoint.ids(engine, body)
    params = generation_params(body, ids, engine, deadline(request, body.timeout))
    generation = Generation(engine, params, arrived=arrived, live=state.live)
    generation.start()
    ident, created = f"{endpoint.prefix}-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return EventStream(endpoint.chunks(generation, ident, created, wants_usage(body)))
    text = await until_gone(request, generation.text())
    return JSONResponse(endpoint.answer(generation, text, ident, created).model_dump())


def _completion(generation: Generation, text: str, ident: str, created: int) -> Completion:
    choice = CompletionChoice(text=text, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    model, usage = generation.engine.name, usage_of(generation)
    return Completion(id=ident, created=created, model=model, choices=[choice], usage=usage)


def _chat_completion(generation: Generation, text: str, ident: str, created: int) -> ChatCompletion:
    message = AssistantMessage(content=text)
    choice = ChatChoice(message=message, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    model, usage = generation.engine.name, usage_of(generation)
    return ChatCompletion(id=ident, created=created, model=model, choices=[choice], usage=usage)


_COMPLETIONS = _Endpoint[CompletionRequest, Completion](
    body=CompletionRequest,
    ids=lambda engine, body: prompt_ids(engine, body.prompt),
    prefix="cmpl",
    chunks=completion_chunks,
    answer=_completion,
)
_CHAT = _Endpoint[ChatRequest, ChatCompletion](
    body=ChatRequest,
    ids=lambda engine, body: chat_ids(engine, body.messages),
    prefix="chatcmpl",
    chunks=chat_chunks,
    answer=_chat_completion,
)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    arrived = time.monotonic()
    state = _state(request)
    body = await parse(request, EmbeddingRequest, state.settings.limits)
    engine = state.embedder_for(body.model)
    engine.check_dimensions(body.dimensions)
    items = await engine.items(body.input)
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
    return await embedding_response(vectors, body, engine.name, tokens)


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
