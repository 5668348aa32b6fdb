"""The chunks of a streamed completion or chat completion, as JSON strings."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from ._bodies import ChatRequest, CompletionRequest
from ._generation import Generation
from ._schemas import ChatChunk, ChatChunkChoice, Completion, CompletionChoice, Delta, Usage

__all__ = ["chat_chunks", "completion_chunks", "usage_of", "wants_usage"]


def usage_of(generation: Generation) -> Usage:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class _Template:
    """A chunk's JSON rendered once by its pydantic model, the text left as a hole:
    each token's chunk is then two string joins, not a model built and dumped."""

    _HOLE = "\x00hole\x00"

    def __init__(self, chunk: BaseModel) -> None:
        rendered = chunk.model_dump_json(exclude={"usage"})
        self._head, self._tail = rendered.split(json.dumps(self._HOLE))

    def fill(self, text: str) -> str:
        return f"{self._head}{json.dumps(text)}{self._tail}"


async def completion_chunks(
    g: Generation, ident: str, created: int, usage: bool
) -> AsyncIterator[str]:
    model = g.engine.name

    def chunk(choices: list[CompletionChoice], **extra: Any) -> str:
        completion = Completion(id=ident, created=created, model=model, choices=choices, **extra)
        return completion.model_dump_json(exclude=None if extra else {"usage"})

    template = _Template(
        Completion(
            id=ident, created=created, model=model, choices=[CompletionChoice(text=_Template._HOLE)]
        )
    )
    async for piece in grouped(g.pieces(), g.engine.stream_interval):
        if piece:
            yield template.fill(piece)
    yield chunk([CompletionChoice(text="", finish_reason=g.finish_reason)])  # type: ignore[arg-type]
    if usage:
        yield chunk([], usage=usage_of(g))


async def chat_chunks(g: Generation, ident: str, created: int, usage: bool) -> AsyncIterator[str]:
    model = g.engine.name

    def chunk(choices: list[ChatChunkChoice], **extra: Any) -> str:
        completion = ChatChunk(id=ident, created=created, model=model, choices=choices, **extra)
        return completion.model_dump_json(exclude=None if extra else {"usage"})

    hole = ChatChunkChoice(delta=Delta(content=_Template._HOLE))
    template = _Template(ChatChunk(id=ident, created=created, model=model, choices=[hole]))
    role = chunk([ChatChunkChoice(delta=Delta(role="assistant", content=""))])
    async for piece in grouped(g.pieces(), g.engine.stream_interval):
        if role:  # with the first token, as vLLM sends it: not before the prompt is read
            yield role
            role = ""
        if piece:
            yield template.fill(piece)
    if role:
        yield role
    yield chunk([ChatChunkChoice(delta=Delta(), finish_reason=g.finish_reason)])  # type: ignore[arg-type]
    if usage:
        yield chunk([], usage=usage_of(g))


async def grouped(pieces: AsyncIterator[str], every: int) -> AsyncIterator[str]:
    """``pieces`` joined ``every`` at a time (a token group); the first goes alone, at once."""
    group: list[str] = []
    first = True
    async with contextlib.aclosing(pieces):  # type: ignore[type-var]
        async for piece in pieces:
            group.append(piece)
            if first or len(group) >= every:
                yield "".join(group)
                group.clear()
                first = False
    if group:
        yield "".join(group)


def wants_usage(body: CompletionRequest | ChatRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage
