"""Nestings of arrays: dicts, tuples and lists whose leaves are arrays.

`flatten` turns a nesting into its leaves and a hashable *structure*;
`unflatten` builds the same nesting around other leaves. Two inputs can be
stacked leaf by leaf only if their structures are equal.

A structure is ``LEAF`` (None) for a lone array, ``("dict", keys, children)``
for a mapping (keys in its own order), ``("tuple", children)`` or
``("list", children)``. Mappings come back as plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["LEAF", "Structure", "flatten", "leaf_values", "unflatten"]

Structure = Any
LEAF: Structure = None


def flatten(x: Any, is_leaf: Callable[[Any], bool]) -> tuple[Structure, list[Any]]:
    """The structure of ``x`` and its leaves, depth first.

    Anything that is neither a dict, tuple, list nor other mapping is a leaf;
    ``is_leaf`` answers first for objects that are not dicts, tuples or lists
    (an array type that is also a mapping stays an array).
    """
    leaves: list[Any] = []
    return _flatten(x, is_leaf, leaves), leaves


def _flatten(x: Any, is_leaf: Callable[[Any], bool], leaves: list[Any]) -> Structure:
    if isinstance(x, tuple | list):
        kind = "tuple" if isinstance(x, tuple) else "list"
        return (kind, tuple(_flatten(v, is_leaf, leaves) for v in x))
    if isinstance(x, dict) or (not is_leaf(x) and isinstance(x, Mapping)):
        keys = tuple(x)
        return ("dict", keys, tuple(_flatten(x[k], is_leaf, leaves) for k in keys))
    leaves.append(x)
    return LEAF


def unflatten(structure: Structure, leaves: Iterator[Any]) -> Any:
    """The nesting of ``structure`` with its leaves taken in order from ``leaves``."""
    if structure is LEAF:
        return next(leaves)
    if structure[0] == "dict":
        return {k: unflatten(s, leaves) for k, s in zip(structure[1], structure[2], strict=True)}
    children = [unflatten(s, leaves) for s in structure[1]]
    return tuple(children) if structure[0] == "tuple" else children


def leaf_values(structure: Structure, values: Any) -> list[Any] | None:
    """``values`` per leaf of ``structure``: a scalar repeats for every leaf, a
    nesting must match ``structure`` (a None leaf stays None). None if it does not match."""
    if not isinstance(values, dict | tuple | list):
        return [values] * _count(structure)
    out: list[Any] = []
    return out if _match(structure, values, out) else None


def _count(structure: Structure) -> int:
    if structure is LEAF:
        return 1
    return sum(_count(s) for s in structure[-1])


def _match(structure: Structure, values: Any, out: list[Any]) -> bool:
    if not isinstance(values, dict | tuple | list):
        out.extend([values] * _count(structure))
        return True
    if structure is LEAF or isinstance(values, dict) != (structure[0] == "dict"):
        return False
    if structure[0] == "dict":
        if set(values) != set(structure[1]):
            return False
        values = [values[k] for k in structure[1]]
    if len(values) != len(structure[-1]):
        return False
    return all(_match(s, v, out) for s, v in zip(structure[-1], values, strict=True))
