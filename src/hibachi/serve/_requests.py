"""From a validated request body to what the engines take: token ids, options, deadlines."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request

from ._engines import LanguageEngine
from ._errors import APIError
from ._generation import GenerationParams
from ._schemas import ChatMessage, ChatRequest, CompletionRequest

__all__ = ["chat_ids", "deadline", "generation_params", "max_tokens", "prompt_ids"]

TIMEOUT_HEADER = "x-request-timeout"


def deadline(request: Request, body_timeout: float | None) -> float | None:
    """Seconds the request may take: the ``X-Request-Timeout`` header or the body's
    ``timeout``, whichever is shorter; None for no deadline."""
    header = request.headers.get(TIMEOUT_HEADER)
    limits = [] if body_timeout is None else [body_timeout]
    if header is not None:
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise APIError(
                400,
                f"X-Request-Timeout must be a number of seconds > 0, got {header!r}",
                param="X-Request-Timeout",
            )
        limits.append(seconds)
    return min(limits) if limits else None


def prompt_ids(engine: LanguageEngine, prompt: Any) -> list[int]:
    """One prompt's token ids, from text or ids (a list of one prompt is that prompt)."""
    if isinstance(prompt, str):
        ids = engine.encode(prompt)
    elif all(isinstance(p, int) for p in prompt):
        ids = list(prompt)
    elif len(prompt) == 1:
        return prompt_ids(engine, prompt[0])
    else:
        raise APIError(400, f"prompt: one prompt per request, got {len(prompt)}", param="prompt")
    engine.check_prompt(ids, "prompt")
    return ids


def chat_ids(engine: LanguageEngine, messages: list[ChatMessage]) -> list[int]:
    """The conversation rendered by the tokenizer's chat template, as token ids."""
    tokenizer = engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400,
            f"model {engine.name!r} has no chat template: use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    conversation = [{"role": m.role, "content": _text_of(m, i)} for i, m in enumerate(messages)]
    try:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # the template's own refusal (jinja2 raise_exception)
        raise APIError(400, f"messages: {exc}", param="messages") from exc
    ids = engine.encode(text)
    engine.check_prompt(ids, "messages")
    return ids


def _text_of(message: ChatMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(
                400,
                f"messages.{index}.content: only text parts are served",
                param=f"messages.{index}.content",
            )
        texts.append(str(part["text"]))
    return "".join(texts)


def generation_params(
    body: CompletionRequest | ChatRequest,
    ids: list[int],
    engine: LanguageEngine,
    timeout: float | None,
) -> GenerationParams:
    """The request as the engine takes it: ids, budget, sampling, stop strings, deadline."""
    sampling = {
        name: value
        for name in ("temperature", "top_p", "top_k", "seed")
        if (value := getattr(body, name)) is not None
    }
    sampling.setdefault("temperature", 1.0)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenerationParams(ids, max_tokens(body, engine), sampling, stop, timeout)


def max_tokens(body: CompletionRequest | ChatRequest, engine: LanguageEngine) -> int:
    """The completion's budget: the request's own, or OpenAI's default for its endpoint.

    OpenAI documents ``max_tokens`` on ``/v1/completions`` as defaulting to
    16 (here ``ServeSettings.default_max_tokens``); a chat completion that
    names no ``max_completion_tokens`` (nor the older ``max_tokens``) runs
    until it stops or fills the context (here the sequence's ``max_length``,
    which the adapter trims to what the prompt leaves), as vLLM's does too.
    """
    if isinstance(body, ChatRequest):
        return body.max_completion_tokens or body.max_tokens or engine.max_length
    return body.max_tokens or engine.default_max_tokens
