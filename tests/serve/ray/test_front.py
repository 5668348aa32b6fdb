"""The front of ``hibachi serve --replicas`` without a cluster: the real app in
an `AppReplica`, reached through a stand-in for Serve's handle, and the
front's ASGI app called directly. What a lost replica, a client that leaves,
and a shutdown do to a request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")
pytest.importorskip("torch")

from hibachi.serve import ServeSettings, create_app, tiny_language_model  # noqa: E402
from hibachi.serve._ray._fleet import Fleet, ServeView  # noqa: E402
from hibachi.serve._ray._front import Front  # noqa: E402
from hibachi.serve._ray._relay import Relay  # noqa: E402
from hibachi.serve._ray._replica import AppReplica  # noqa: E402

Message = dict[str, Any]


def lost() -> BaseException:
    return ray.exceptions.ActorUnavailableError("RpcError: Socket closed", None)


class Cancelled(Exception):
    """What Serve raises from a response cancelled by its caller."""


class Response:
    """A streaming Serve response: ``batches`` from a generator, run in a task
    of its own as in a replica; `cancel` cancels that task. ``fail_after``
    batches, the replica is lost."""

    def __init__(self, batches: AsyncIterator[list[Message]], fail_after: int | None) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        self.task = asyncio.ensure_future(self._run(batches, fail_after))

    async def _run(self, batches: AsyncIterator[list[Message]], fail_after: int | None) -> None:
        sent = 0
        try:
            async for batch in batches:
                if sent == fail_after:
                    await self.queue.put(lost())
                    return
                await self.queue.put(batch)
                sent += 1
            await self.queue.put(StopAsyncIteration())
        except asyncio.CancelledError:
            await self.queue.put(Cancelled())

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> list[Message]:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        batch: list[Message] = item
        return batch


class Handle:
    """Serve's handle to the app's replica, in this process."""

    def __init__(self, replica: AppReplica, fail_after: int | None = None) -> None:
        self.replica = replica
        self.fail_after = fail_after
        self.responses: list[Response] = []
        self.forward = self

    def options(self, **_: Any) -> Handle:
        return self

    def remote(self, scope: Message, body: bytes) -> Response:
        response = Response(self.replica.forward(scope, body), self.fail_after)
        self.responses.append(response)
        return response

    def broadcast(self, method: str, *args: Any) -> Any:
        replica = self.replica

        class Broadcast:
            async def results_async(self, **_: Any) -> list[Any]:
                return [await getattr(replica, method)(*args)]

        return Broadcast()


class StaticFleet(Fleet):
    def serve_view(self) -> ServeView:
        return ServeView("HEALTHY", {"RUNNING": 1})


@pytest.fixture(scope="module")
def language_model() -> Any:
    return tiny_language_model()


@asynccontextmanager
async def replica_of(language_model: Any, **options: Any) -> AsyncIterator[AppReplica]:
    settings = ServeSettings(max_batch_size=4, max_length=4096, **options)
    replica = AppReplica(lambda: create_app(language_model, None, settings=settings))
    app = replica.__serve_build_asgi_app__()
    async with app.router.lifespan_context(app):
        yield replica


class Client:
    """One HTTP exchange with the front, as uvicorn would run it."""

    def __init__(self, body: Any = None) -> None:
        self.sent: list[Message] = []
        self.leave = asyncio.Event()
        self.got_event = asyncio.Event()
        data = b"" if body is None else json.dumps(body).encode()
        self._parts = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive(self) -> Message:
        if self._parts:
            return self._parts.pop()
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and b"data: " in message.get("body", b""):
            self.got_event.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def events(self) -> list[str]:
        return [e[len("data: ") :] for e in self.body.decode().split("\n\n") if e]

    @property
    def complete(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


def scope(method: str, path: str) -> Message:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "query_string": b"", "http_version": "1.1", "scheme": "http",
            "headers": [(b"content-type", b"application/json")]}  # fmt: skip


def completion(tokens: int, stream: bool = True) -> dict[str, Any]:
    return {"prompt": "hello", "max_tokens": tokens, "temperature": 0, "stream": stream}


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 60))


def test_a_stream_is_relayed_whole(language_model: Any) -> None:
    async def main() -> tuple[Client, str]:
        async with replica_of(language_model) as replica:
            client = Client(completion(5))
            relay = Relay(
                Handle(replica), scope("POST", "/v1/completions"), client.receive, client.send
            )
            return client, await relay.run(json.dumps(completion(5)).encode())

    client, outcome = run(main)
    assert outcome == "answered" and client.status == 200 and client.complete
    events = client.events()
    assert events[-1] == "[DONE]" and len(events) == 5 + 2  # 5 tokens, the finish chunk


@pytest.mark.parametrize("fail_after", [0, 3], ids=["before-the-answer", "mid-stream"])
def test_a_lost_replica_ends_the_request_with_an_error_that_says_so(
    language_model: Any, fail_after: int
) -> None:
    async def main() -> tuple[Client, str]:
        async with replica_of(language_model) as replica:
            client = Client()
            handle = Handle(replica, fail_after=fail_after)
            relay = Relay(handle, scope("POST", "/v1/completions"), client.receive, client.send)
            return client, await relay.run(json.dumps(completion(50)).encode())

    client, outcome = run(main)
    assert outcome == "replica_lost" and client.complete
    if fail_after == 0:
        assert client.status == 503
        assert ("retry-after", "1") in [
            (k.decode(), v.decode()) for k, v in client.sent[0]["headers"]
        ]
        error = json.loads(client.body)["error"]
    else:
        assert client.status == 200
        events = client.events()
        assert len(events) > 1
        error = json.loads(events[-1])["error"]
    assert error["code"] == "replica_lost" and "lost" in error["message"]


def test_a_client_that_leaves_cancels_the_replicas_request(language_model: Any) -> None:
    async def main() -> tuple[str, Handle, int]:
        async with replica_of(language_model) as replica:
            client = Client()
            handle = Handle(replica)
            relay = Relay(handle, scope("POST", "/v1/completions"), client.receive, client.send)
            running = asyncio.ensure_future(relay.run(json.dumps(completion(4000)).encode()))
            await client.got_event.wait()
            client.leave.set()
            outcome = await running
            batcher = replica._state().language.batcher  # type: ignore[union-attr]
            return outcome, handle, await until_rows_freed(batcher)

    outcome, handle, active = run(main)
    assert outcome == "client_gone" and handle.responses[0].cancelled and active == 0


def test_an_interrupted_stream_ends_with_the_shutdown_event(language_model: Any) -> None:
    async def main() -> tuple[Client, str]:
        async with replica_of(language_model) as replica:
            client = Client()
            relay = Relay(
                Handle(replica), scope("POST", "/v1/completions"), client.receive, client.send
            )
            running = asyncio.ensure_future(relay.run(json.dumps(completion(4000)).encode()))
            await client.got_event.wait()
            relay.interrupt()
            return client, await running

    client, outcome = run(main)
    assert outcome == "shutdown" and client.complete
    assert json.loads(client.events()[-1])["error"]["code"] == "shutdown"


def test_the_front_drains_its_replicas_and_refuses_new_work(language_model: Any) -> None:
    async def main() -> tuple[list[str], Client, Client, Client]:
        async with replica_of(language_model) as replica:
            handle = Handle(replica)
            front = Front(handle, StaticFleet(handle, "a", "a"), grace=0.2)
            async with lifespan(front):
                streaming = Client(completion(4000))
                running = asyncio.ensure_future(
                    front(scope("POST", "/v1/completions"), streaming.receive, streaming.send)
                )
                await streaming.got_event.wait()
                front.begin_shutdown()
                refused, health = Client(completion(2)), Client()
                await front(scope("POST", "/v1/completions"), refused.receive, refused.send)
                await front(scope("GET", "/health"), health.receive, health.send)
                await running
            return streaming.events(), refused, health, streaming

    events, refused, health, streaming = run(main)
    assert json.loads(events[-1])["error"]["code"] == "shutdown" and streaming.complete
    assert refused.status == 503 and json.loads(refused.body)["error"]["code"] == "shutdown"
    assert health.status == 503 and json.loads(health.body)["draining"] is True


def test_health_and_metrics_speak_for_every_replica(language_model: Any) -> None:
    async def main() -> tuple[Client, Client]:
        async with replica_of(language_model) as replica:
            handle = Handle(replica)
            front = Front(handle, StaticFleet(handle, "a", "a"), grace=1.0)
            async with lifespan(front):
                answered = Client(completion(3, stream=False))
                await front(scope("POST", "/v1/completions"), answered.receive, answered.send)
                health, metrics = Client(), Client()
                await front(scope("GET", "/health"), health.receive, health.send)
                await front(scope("GET", "/metrics"), metrics.receive, metrics.send)
            return health, metrics

    health, metrics = run(main)
    body = json.loads(health.body)
    assert health.status == 200 and body["status"] == "ok"
    assert body["replicas"]["local"]["status"] == "ok"
    text = metrics.body.decode()
    assert (
        'hibachi_requests_ended_total{model="hibachi-llama",reason="budget",replica="local"} 1.0'
        in text
    )
    assert 'hibachi_front_requests_ended_total{outcome="answered"} 1.0' in text
    assert 'hibachi_replicas{state="RUNNING"} 1.0' in text


async def until_rows_freed(batcher: Any) -> int:
    """The batcher's active rows once it has freed them (at its next step), or after 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    # No event tells a freed row: the batcher frees it at its next step.
    loop = asyncio.get_running_loop()
    while (rows := batcher.stats().requests_in_flight) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return int(rows)


@asynccontextmanager
async def lifespan(front: Front) -> AsyncIterator[None]:
    """The front's lifespan, as uvicorn runs it: started, then shut down."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(front({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


@pytest.mark.parametrize("hosts", [("127.0.0.1", "localhost"), ("*.example.com",)])
def test_the_replicas_health_passes_their_own_host_check(
    language_model: Any, hosts: tuple[str, ...]
) -> None:
    """The front asks each replica's app for /health and /metrics itself: the app's
    front door must let those asks through whatever host names it allows."""
    from hibachi.serve import Access

    async def main() -> Client:
        async with replica_of(language_model, access=Access(allowed_hosts=hosts)) as replica:
            handle = Handle(replica)
            front = Front(handle, StaticFleet(handle, "a", "a"), grace=1.0)
            async with lifespan(front):
                health = Client()
                await front(scope("GET", "/health"), health.receive, health.send)
            return health

    health = run(main)
    assert health.status == 200, health.body
    assert json.loads(health.body)["replicas"]["local"]["status"] == "ok"
