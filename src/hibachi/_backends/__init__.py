"""The tensor libraries hibachi works with, behind one `Backend` protocol (`_protocol`).

This package is the entry: `backend_of(array)` finds an array's backend lazily (no tensor
library is imported until an array of it is seen); `register_backend` adds one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._protocol import Backend

__all__ = ["Backend", "backend_of", "register_backend"]

_lock = threading.Lock()
_by_type: dict[type, Backend] = {}
_registered: list[tuple[type, Backend]] = []


def register_backend(array_type: type, backend: Backend) -> None:
    """Use ``backend`` for arrays that are instances of ``array_type``.

    Registered backends take precedence over the built-in ones.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"{backend!r} does not implement hibachi.Backend")
    with _lock:
        _registered.insert(0, (array_type, backend))
        _by_type.clear()


def backend_of(x: object) -> Backend | None:
    """The backend for array ``x``, or None if ``x`` is no array hibachi knows."""
    kind = type(x)
    backend = _by_type.get(kind)
    if backend is None:
        backend = _find(x)
        if backend is not None:
            with _lock:
                _by_type[kind] = backend
    return backend


def _find(x: object) -> Backend | None:
    for array_type, backend in _registered:
        if isinstance(x, array_type):
            return backend
    module = type(x).__module__.partition(".")[0]
    factory = _BUILTIN.get(module)
    if factory is not None:
        return _cached(module, factory)
    return _generic(x)


_instances: dict[str, Backend] = {}


def _cached(key: str, factory: Callable[[], Backend]) -> Backend:
    with _lock:
        if key not in _instances:
            _instances[key] = factory()
        return _instances[key]


def _numpy() -> Backend:
    from ._array_api import NumpyBackend

    return NumpyBackend()


def _torch() -> Backend:
    from ._array_api import TorchBackend

    return TorchBackend()


def _jax() -> Backend:
    from ._jax import JaxBackend

    return JaxBackend()


_BUILTIN: dict[str, Callable[[], Backend]] = {
    "numpy": _numpy,
    "torch": _torch,
    "jax": _jax,
    "jaxlib": _jax,
}


def _generic(x: object) -> Backend | None:
    import array_api_compat

    if not array_api_compat.is_array_api_obj(x):
        return None
    try:
        xp: Any = array_api_compat.array_namespace(x)
    except TypeError:
        return None
    from ._array_api import ArrayAPIBackend

    return _cached(f"xp:{xp.__name__}", lambda: ArrayAPIBackend(xp))
