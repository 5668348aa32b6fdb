"""One feedforward request as the core sees it, and the checks made at ``run()``.

Items that share a `Layout` (the same nesting, backend, and per leaf the
same dtype, device and shape, the padded axis aside) can be stacked into one
batch; items of different layouts never are.

`Item` is what the core needs of a request: its input, and a way to hand it
its outcome. Where the outcome goes is the implementer's business (the
`hibachi.ResultHandle` a caller holds; a recording stub in the core's tests).
One object per request keeps the garbage collector's work per caller as small
as a hand-written batcher's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .._backends import Backend, backend_of
from .._core.model import describe
from .._core.values import describe_value
from .._exceptions import ConfigurationError, HibachiError, InvalidRequest
from .nesting import LEAF, Structure, flatten, leaf_values
from .pad_fit import check_pad_fits

__all__ = ["InputChecker", "Item", "Layout"]


@dataclass(frozen=True, eq=False)
class Layout:
    """What the items of one group share; compared by identity (one per kind of input).

    ``pads`` holds, per leaf, the value it is right-padded with along its first
    axis, or None for a leaf stacked as it is.
    """

    structure: Structure
    backend: Backend
    pads: tuple[Any, ...]
    padded: bool = field(init=False)  # some leaf is padded

    def __post_init__(self) -> None:
        object.__setattr__(self, "padded", any(pad is not None for pad in self.pads))


class Item(Protocol):
    """One caller's input, waiting for or inside a batch, and where its outcome goes.

    ``_leaves`` is the input itself when it is a lone array (the layout's
    structure is ``LEAF``), else the tuple of its leaves. ``_length`` is the
    longest first axis among its padded leaves (0 when none is padded).
    ``_arrival`` is a reading of the core's clock (`time.monotonic`), ``_seq``
    the item's place in line, set by the core; past ``_deadline`` an item that
    has not reached the model is dropped. Every member is private: the
    `ResultHandle` that is the item shows its caller only its own surface.
    """

    _leaves: Any
    _layout: Layout
    _length: int
    _arrival: float
    _deadline: float | None
    _seq: int

    _expired: bool
    """The caller stopped waiting because its own timeout passed."""

    @property
    def _departed(self) -> bool:
        """The caller no longer waits: it cancelled, timed out, or its event loop is gone."""
        ...

    def _deliver(self, outcome: Any) -> None:
        """Called once by the core: the result, or a `Failure` (see `hibachi._core.delivery`)."""
        ...

    def _abandon(self, error: BaseException) -> None:
        """Fail with ``error`` now, from a thread other than the engine's (stuck in the model)."""
        ...


Described = tuple[Any, Layout, int]


class InputChecker:
    """Turns a caller's input into an `Item`, or refuses it with `InvalidRequest`.

    A lone array of a type already seen takes a short path: `run()` is the
    hot path of every caller.
    """

    def __init__(self, pad_value: Any = None, backend: Backend | None = None) -> None:
        check_pad_value(pad_value)
        self._pad_value = pad_value
        self._pinned = backend
        self._pads: dict[Structure, tuple[Any, ...]] = {}
        self._layouts: dict[tuple[Any, ...], Layout] = {}
        self._lone_types: dict[type, Backend] = {}
        self._lone_pad: Any = None
        self._last: tuple[Backend, Any, Any, Any, Layout] | None = None
        self._last_dict: _DictKind | None = None  # the kind of the previous flat dict input

    def describe(self, x: Any) -> Described:
        """The leaves of input ``x`` (see `Item`), its layout and its length."""
        backend = self._lone_types.get(type(x))
        if backend is None:
            kind = self._last_dict
            if kind is not None and type(x) is dict:
                found = kind.match(x)
                if found is not None:
                    return found
            return self._describe_any(x)
        shape, dtype, device = x.shape, x.dtype, backend.device(x)
        if self._lone_pad is None:
            rest, length = shape, 0
        elif shape:
            rest, length = shape[1:], shape[0]
        else:
            raise InvalidRequest(_UNPADDABLE)
        last = self._last  # the kind of the previous lone array: callers often send one kind
        if (
            last is not None
            and last[2] is dtype
            and last[0] is backend
            and last[1] == rest
            and last[3] == device
        ):
            return x, last[4], length
        key = (LEAF, backend, (rest, dtype, device))
        layout = self._layouts.get(key) or self._layout(key, LEAF, backend)
        self._last = (backend, rest, dtype, device, layout)
        return x, layout, length

    def _describe_any(self, x: Any) -> Described:
        """`describe` for any input; learns the types of lone arrays for the short path.

        An input whose own methods raise while it is read is refused with
        `InvalidRequest`, its exception chained."""
        try:
            return self._read(x)
        except HibachiError:
            raise
        except Exception as exc:
            raise InvalidRequest(f"the input could not be read: {describe(exc)}") from exc

    def _read(self, x: Any) -> Described:
        structure, leaves = flatten(x, _is_array)
        backend = self._backend(leaves)
        pads = self._pads_for(structure)
        key, length = _describe(structure, backend, leaves, pads)
        layout = self._layouts.get(key) or self._layout(key, structure, backend)
        if structure is not LEAF:
            if type(x) is dict and all(child is LEAF for child in structure[2]):
                self._last_dict = _DictKind(x, layout)
            return tuple(leaves), layout, length
        if isinstance(x.shape, tuple):
            self._lone_pad = self._pads[LEAF][0]
            self._lone_types[type(x)] = backend
        return x, layout, length

    def _layout(self, key: tuple[Any, ...], structure: Structure, backend: Backend) -> Layout:
        """The layout of a kind of input first seen, once its pad values fit its dtypes."""
        pads = self._pads[structure]
        for pad, (_, dtype, _) in zip(pads, key[2:], strict=True):
            if pad is not None:
                check_pad_fits(pad, dtype)
        return self._layouts.setdefault(key, Layout(structure, backend, pads))

    def _backend(self, leaves: list[Any]) -> Backend:
        if not leaves:
            raise InvalidRequest("the input is an empty nesting: it holds no array")
        backend = self._pinned or backend_of(leaves[0])
        for i, leaf in enumerate(leaves):
            if backend is None or not self._belongs(leaf, backend):
                raise InvalidRequest(_leaf_complaint(i, leaf, backend, self._pinned is not None))
        assert backend is not None
        return backend

    def _belongs(self, leaf: Any, backend: Backend) -> bool:
        if self._pinned is not None:
            return backend.is_array(leaf)
        return backend_of(leaf) is backend and backend.is_array(leaf)

    def _pads_for(self, structure: Structure) -> tuple[Any, ...]:
        pads = self._pads.get(structure)
        if pads is None:
            values = leaf_values(structure, self._pad_value)
            if values is None:
                raise InvalidRequest(
                    f"pad_value {describe_value(self._pad_value)}"
                    " does not match the input's nesting"
                )
            pads = self._pads.setdefault(structure, tuple(values))
        return pads


_UNPADDABLE = "a leaf padded with pad_value needs at least one axis, got a 0-d array"


class _DictKind:
    """A flat dict input already described: the short path for the next one like it.

    Its keys in order, and per leaf its type, dtype, device and shape (the
    padded axis aside). An input that differs in any of these, or that the
    full checks would refuse, takes the full path.
    """

    __slots__ = ("backend", "keys", "layout", "leaves")

    def __init__(self, x: dict[Any, Any], layout: Layout) -> None:
        self.keys = tuple(x)
        self.layout = layout
        self.backend = layout.backend
        self.leaves = [
            (type(leaf), leaf.dtype, layout.backend.device(leaf), _rest(leaf, pad), pad is not None)
            for leaf, pad in zip(x.values(), layout.pads, strict=True)
        ]

    def match(self, x: dict[Any, Any]) -> Described | None:
        """``x`` described as the full path would, or None if ``x`` is not of this kind."""
        if len(x) != len(self.keys) or tuple(x) != self.keys:
            return None
        leaves, length, device = tuple(x.values()), 0, self.backend.device
        for leaf, (kind, dtype, where, rest, padded) in zip(leaves, self.leaves, strict=True):
            if type(leaf) is not kind or leaf.dtype is not dtype:
                return None
            shape = leaf.shape
            if padded:
                if not shape or shape[1:] != rest:
                    return None
                length = max(length, shape[0])
            elif shape != rest:
                return None
            if device(leaf) != where:
                return None
        return leaves, self.layout, length


def _rest(leaf: Any, pad: Any) -> tuple[int, ...]:
    shape = tuple(leaf.shape)
    return shape if pad is None else shape[1:]


def _describe(
    structure: Structure, backend: Backend, leaves: list[Any], pads: tuple[Any, ...]
) -> tuple[tuple[Any, ...], int]:
    """The layout key (structure, backend, then shape, dtype, device per leaf) and the length."""
    key: list[Any] = [structure, backend]
    length = 0
    for leaf, pad in zip(leaves, pads, strict=True):
        shape = tuple(leaf.shape)
        if pad is not None:
            if not shape:
                raise InvalidRequest(_UNPADDABLE)
            length = max(length, shape[0])
            shape = shape[1:]
        key.append((shape, leaf.dtype, backend.device(leaf)))
    return tuple(key), length


def _is_array(x: object) -> bool:
    return backend_of(x) is not None


def _leaf_complaint(i: int, leaf: object, backend: Backend | None, pinned: bool) -> str:
    kind = f"{type(leaf).__module__}.{type(leaf).__qualname__}"
    if backend is None or (backend_of(leaf) is None and not pinned):
        return f"leaf {i} of the input is not an array hibachi knows: got {kind}"
    whose = "the batcher's backend" if pinned else "the input's first leaf"
    return f"leaf {i} of the input is a {kind}, not a {backend.name} array like {whose}"


_SCALARS = (int, float, complex, bool)


def check_pad_value(pad_value: Any) -> None:
    """A scalar, or a dict / tuple / list nesting of scalars and None; else ConfigurationError."""
    if pad_value is None or isinstance(pad_value, _SCALARS):
        return
    if isinstance(pad_value, dict | tuple | list):
        try:
            values = list(pad_value.values() if isinstance(pad_value, dict) else pad_value)
        except Exception as exc:  # a nesting whose iteration fails is a setting that cannot work
            raise ConfigurationError(f"pad_value could not be read: {describe(exc)}") from exc
        for value in values:
            check_pad_value(value)
        return
    try:
        scalar = getattr(pad_value, "shape", None) == ()  # a NumPy scalar or 0-d array
    except Exception:
        scalar = False
    if scalar:
        return
    raise ConfigurationError(
        f"pad_value must be a scalar or a nesting of scalars, got {type(pad_value).__name__}"
    )
