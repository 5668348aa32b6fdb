"""`Fleet`: what the front knows of its replicas, for ``/health`` and ``/metrics``.

Both ask every replica at once (``handle.broadcast``) and Serve's controller
for the deployment's state, so that one request to the front sees the whole
deployment: a replica that died, is being replaced, or has a failed batcher.

``/health`` answers 200 with ``"status": "ok"`` when Serve runs every replica
it should and each answers that its batchers are healthy; 200 with
``"degraded"`` while at least one replica serves but another is lost, being
replaced, or unhealthy; 503 with ``"unavailable"`` when none serves. The
body holds Serve's replica states and each replica's own ``/health``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from ray import serve

from ._merge import merge_metrics
from ._replica import Reply

__all__ = ["Fleet", "FleetHealth", "ServeView"]

logger = logging.getLogger("hibachi.serve")

ASK_TIMEOUT_S = 5.0  # a replica on a lost node may take seconds to be known unreachable

Status = Literal["ok", "degraded", "unavailable"]


@dataclass(frozen=True)
class ServeView:
    """Serve's controller on one deployment: its status and replica states."""

    status: str
    replicas: dict[str, int]
    message: str = ""

    @property
    def running(self) -> int:
        return self.replicas.get("RUNNING", 0)


@dataclass(frozen=True)
class FleetHealth:
    """The deployment's health, from Serve's view and the replicas' answers."""

    serve: ServeView
    answers: dict[str, Any] = field(default_factory=dict)  # replica -> its /health body
    unanswered: int = 0  # replicas that raised (lost, unreachable); 1 after a timeout
    healthy: int = 0  # replicas whose /health said 200

    @property
    def status(self) -> Status:
        if self.healthy == 0 and (self.answers or self.serve.running == 0):
            return "unavailable"
        whole = self.serve.status == "HEALTHY" and self.unanswered == 0
        return "ok" if whole and self.healthy == len(self.answers) else "degraded"

    def body(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "draining": False,
            "deployment": {
                "status": self.serve.status,
                "replicas": self.serve.replicas,
                "message": self.serve.message,
            },
            "replicas": self.answers,
            "unanswered": self.unanswered,
        }


class Fleet:
    """The replicas of the Serve application ``app`` (deployment ``deployment``)."""

    def __init__(self, handle: Any, app: str, deployment: str) -> None:
        self._handle = handle
        self._app = app
        self._deployment = deployment

    async def health(self) -> FleetHealth:
        (replies, unanswered), view = await asyncio.gather(
            self._ask("/health"), asyncio.to_thread(self.serve_view)
        )
        answers = {r.replica: _json(r.body) for r in replies}
        healthy = sum(r.status == 200 for r in replies)
        return FleetHealth(view, answers, unanswered, healthy)

    async def metrics(self) -> bytes:
        """Every replica's ``/metrics``, each sample labelled with its ``replica``."""
        replies, _ = await self._ask("/metrics")
        return merge_metrics({r.replica: r.body.decode() for r in replies if r.status == 200})

    async def drain(self, grace: float) -> None:
        """Tell every replica to stop admitting and end its generations after ``grace``."""
        response = self._handle.broadcast("drain", grace)
        try:
            await response.results_async(timeout_s=ASK_TIMEOUT_S, return_exceptions=True)
        except TimeoutError:
            logger.warning("a replica did not confirm the drain within %.0f s", ASK_TIMEOUT_S)

    def serve_view(self) -> ServeView:
        """Serve's status of the deployment (blocking: a call to Serve's controller)."""
        app = serve.status().applications.get(self._app)
        overview = None if app is None else app.deployments.get(self._deployment)
        if overview is None:
            return ServeView("NOT_DEPLOYED", {})
        states = {str(getattr(k, "value", k)): n for k, n in overview.replica_states.items()}
        message = overview.message.splitlines()[0] if overview.message else ""
        return ServeView(str(overview.status.value), states, message)

    async def _ask(self, path: str) -> tuple[list[Reply], int]:
        """Every replica's ``GET path``; and how many raised or did not answer."""
        response = self._handle.broadcast("get", path)
        try:
            results = await response.results_async(timeout_s=ASK_TIMEOUT_S, return_exceptions=True)
        except TimeoutError:
            logger.warning("replicas did not answer GET %s within %.0f s", path, ASK_TIMEOUT_S)
            return [], 1
        replies = [r for r in results if isinstance(r, Reply)]
        return replies, len(results) - len(replies)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
