"""Every error hibachi raises, rooted at one base class.

Each subclasses the built-in exception it most resembles, so callers that
already catch ``ValueError`` or ``TimeoutError`` keep working::

    HibachiError
    ├── InvalidRequest      (ValueError)    a request is refused at submission
    ├── ConfigurationError  (ValueError)    a batcher is built with bad settings
    ├── QueueFull                           the waiting queue is at max_queue_size
    ├── BatcherClosed       (RuntimeError)  the batcher is not open, or was closed
    ├── ModelError          (RuntimeError)  the model raised or returned a bad result
    └── Timeout             (TimeoutError)  a request's deadline passed

A model's own exception is never swallowed: it is the ``__cause__`` of the
``ModelError`` its requests receive.
"""

from __future__ import annotations

__all__ = [
    "BatcherClosed",
    "ConfigurationError",
    "HibachiError",
    "InvalidRequest",
    "ModelError",
    "QueueFull",
    "Timeout",
]


class HibachiError(Exception):
    """Base class of every error raised by hibachi."""


class InvalidRequest(HibachiError, ValueError):
    """A request was refused at submission; no other request is affected."""


class ConfigurationError(HibachiError, ValueError):
    """A batcher was constructed with settings that cannot work."""


class QueueFull(HibachiError):
    """The waiting queue holds ``max_queue_size`` requests already."""


class BatcherClosed(HibachiError, RuntimeError):
    """The batcher is not open: never entered, closing, or closed."""


class ModelError(HibachiError, RuntimeError):
    """The model raised, or returned something hibachi cannot use.

    The model's own exception, if any, is chained as ``__cause__``.
    """


class Timeout(HibachiError, TimeoutError):
    """A request was not answered before its deadline."""
