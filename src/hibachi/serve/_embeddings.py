"""The answer of ``/v1/embeddings``: vectors shortened when asked, encoded row by row.

A large answer (2,048 vectors of 384 floats is some 8 MB of JSON) is encoded
on a worker thread, one row at a time: each row is a short call, so the
event loop gets its turn between rows (see `_offload`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from fastapi import Response

from ._bodies import EmbeddingRequest
from ._offload import off_loop

__all__ = ["embedding_response", "shorten"]

OFF_LOOP_ROWS = 16


async def embedding_response(
    vectors: list[Any], body: EmbeddingRequest, model: str, tokens: int
) -> Response:
    """OpenAI's ``{"object": "list", "data": [...], "model", "usage"}`` for ``vectors``."""
    content = await off_loop(
        len(vectors) > OFF_LOOP_ROWS,
        _encode,
        vectors,
        body.encoding_format,
        body.dimensions,
        model,
        tokens,
    )
    return Response(content, media_type="application/json")


def _encode(
    vectors: list[Any], encoding: str, dimensions: int | None, model: str, tokens: int
) -> bytes:
    rows = []
    for index, vector in enumerate(vectors):
        array = np.asarray(vector, dtype=np.float32)
        if dimensions is not None and dimensions < array.shape[-1]:
            array = shorten(array, dimensions)
        if encoding == "base64":
            value = f'"{base64.b64encode(array.tobytes()).decode()}"'
        else:
            value = json.dumps(array.tolist())
        rows.append(f'{{"object":"embedding","index":{index},"embedding":{value}}}')
    usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
    text = (
        f'{{"object":"list","data":[{",".join(rows)}],"model":{json.dumps(model)},"usage":{usage}}}'
    )
    return text.encode()


def shorten(vector: np.ndarray[Any, Any], dimensions: int) -> np.ndarray[Any, Any]:
    """A Matryoshka embedding's first ``dimensions`` values, renormalised to length 1."""
    head = vector[..., :dimensions].astype(np.float32)
    norm = float(np.linalg.norm(head))
    return head / norm if norm > 0 else head
