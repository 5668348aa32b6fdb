"""The errors of hibachi's Ray integration, under `hibachi.HibachiError`::

    HibachiError
    ├── ClusterUnreachable  (ConnectionError)  `connect` could not join the cluster;
    │                                          the message says what to fix
    ├── ReplicaLost         (RuntimeError)     the replica serving a request died, or
    │                                          its node did, before the request ended
    └── ReplicaUnhealthy                       a replica's health check failed (Serve
                                               then replaces the replica)

Errors raised by the batcher in a replica keep their own hibachi types
across the process boundary (see `hibachi.integrations.ray`).
"""

from __future__ import annotations

from ..._exceptions import HibachiError

__all__ = ["ClusterUnreachable", "ReplicaLost", "ReplicaUnhealthy"]


class ClusterUnreachable(HibachiError, ConnectionError):
    """`connect` could not join the Ray cluster; the message names the fix.

    Ray's own error is chained as ``__cause__``.
    """


class ReplicaLost(HibachiError, RuntimeError):
    """The replica serving a request died (its process, or its node) before the
    request ended. The tokens already received are valid; the rest never come.

    Ray's own error is chained as ``__cause__``.
    """


class ReplicaUnhealthy(HibachiError):
    """Raised by a replica's ``check_health`` when its batcher cannot serve:
    Serve then stops the replica and starts a new one."""
