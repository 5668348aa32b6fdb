"""`stream` and `call` over fake Serve responses: a replica lost mid-request
raises `ReplicaLost`; the replica's own errors keep their types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

import hibachi  # noqa: E402
from hibachi.integrations.ray import ReplicaLost, call, stream  # noqa: E402


def unavailable() -> BaseException:
    return ray.exceptions.ActorUnavailableError("RpcError: Socket closed", None)


class FakeResponse:
    """A Serve response: yields ``tokens``, then raises ``error`` (if any)."""

    def __init__(self, tokens: list[int], error: BaseException | None = None) -> None:
        self._items = self._run(tokens, error)
        self.cancelled = False

    async def _run(self, tokens: list[int], error: BaseException | None) -> AsyncIterator[int]:
        for token in tokens:
            yield token
        if error is not None:
            raise error

    def __anext__(self) -> Any:
        return self._items.__anext__()

    def __await__(self) -> Any:
        return self._result().__await__()

    async def _result(self) -> Any:
        return [token async for token in self._items]

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.run = self

    def options(self, **_: Any) -> FakeHandle:
        return self

    def remote(self, *args: Any, **kwargs: Any) -> FakeResponse:
        return self.response


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(unavailable(), id="unavailable"),
        pytest.param(ray.exceptions.ActorDiedError(), id="died"),
    ],
)
def test_a_stream_whose_replica_is_lost_raises_replica_lost(error: BaseException) -> None:
    async def main() -> list[int]:
        got: list[int] = []
        with pytest.raises(ReplicaLost) as caught:
            async for token in stream(FakeHandle(FakeResponse([1, 2], error))):
                got.append(token)
        assert caught.value.__cause__ is error
        assert isinstance(caught.value, hibachi.HibachiError | RuntimeError)
        return got

    assert asyncio.run(main()) == [1, 2]


def test_a_call_whose_replica_is_lost_raises_replica_lost() -> None:
    with pytest.raises(ReplicaLost):
        asyncio.run(call(FakeHandle(FakeResponse([], unavailable()))))


@pytest.mark.parametrize(
    "cause",
    [
        pytest.param(hibachi.ModelError("boom"), id="model-error"),
        pytest.param(ray.exceptions.ActorDiedError(), id="an-actor-the-model-called-died"),
    ],
)
def test_the_replicas_own_errors_keep_their_type(cause: Exception) -> None:
    typed = ray.exceptions.RayTaskError("run", "traceback", cause).as_instanceof_cause()
    with pytest.raises(type(cause)) as caught:
        asyncio.run(stream(FakeHandle(FakeResponse([1], typed))).collect())
    assert not isinstance(caught.value, ReplicaLost)
