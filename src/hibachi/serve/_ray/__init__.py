"""``hibachi serve --replicas``: the OpenAI-compatible app on Ray Serve.

    client ── HTTP ──> Front (this process) ── Serve handle ──> AppReplica 1 … N
                                                               (create_app(...) each)

- `_deployment`: the replicas' Serve deployment (`http_deployment`); the
  CLI's scaling options.
- `_replica`: `AppReplica`, one app per replica, reached by Serve's HTTP
  proxy or by a handle (``forward`` runs one HTTP request through the app).
- `_bridge`: one HTTP request carried over a handle.
- `_front`, `_relay`: the front's ASGI app and one relayed request.
- `_fleet`, `_merge`: ``/health`` and ``/metrics`` for the whole deployment.
- `_main`: `serve_over_ray`, from joining the cluster to exiting.
"""

from __future__ import annotations

from ._deployment import http_deployment as http_deployment
from ._deployment import scaling_options as scaling_options
from ._main import serve_over_ray as serve_over_ray

__all__ = ["http_deployment", "scaling_options", "serve_over_ray"]
