"""The endpoints: OpenAI's shapes, so the official ``openai`` client works unchanged."""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .._exceptions import Timeout
from ._chunks import chat_chunks, completion_chunks, usage_of, wants_usage
from ._engines import EmbeddingEngine
from ._errors import APIError, ClientGone
from ._generation import Generation, GenerationParams
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
    arrived = time.monotonic()
    state = _state(request)
    engine = state.language_for(body.model)
    ids = prompt_ids(engine, body.prompt)
    max_tokens = body.max_tokens or engine.default_max_tokens
    params = generation_params(body, ids, max_tokens, deadline(request, body.timeout))
    generation = _started(state, params, arrived)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return EventStream(completion_chunks(generation, ident, created, wants_usage(body)))
    text = await until_gone(request, generation.text())
    choice = CompletionChoice(text=text, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    return Completion(
        id=ident, created=created, model=engine.name, choices=[choice], usage=usage_of(generation)
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion | EventStream:
    arrived = time.monotonic()
    state = _state(request)
    engine = state.language_for(body.model)
    ids = chat_ids(engine, body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens or engine.max_length
    params = generation_params(body, ids, max_tokens, deadline(request, body.timeout))
    generation = _started(state, params, arrived)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return EventStream(chat_chunks(generation, ident, created, wants_usage(body)))
    text = await until_gone(request, generation.text())
    message = ChatMessage(role="assistant", content=text)
    choice = ChatChoice(message=message, finish_reason=generation.finish_reason)  # type: ignore[arg-type]
    return ChatCompletion(
        id=ident, created=created, model=engine.name, choices=[choice], usage=usage_of(generation)
    )


def _started(state: ServerState, params: GenerationParams, arrived: float) -> Generation:
    assert state.language is not None
    generation = Generation(state.language, params, arrived=arrived, live=state.live)
    generation.start()
    return generation


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
