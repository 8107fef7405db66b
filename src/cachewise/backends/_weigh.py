"""A cheap estimate of how many bytes a cached value holds."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Weigher = Callable[[Any], int]

# Per-entry bookkeeping that is not the value: the Entry object, the OrderedDict
# node and the weight record. Measured on CPython 3.11 as ~200 bytes; rounded up.
ENTRY_OVERHEAD = 256

_MAX_DEPTH = 4
# Containers longer than this are weighed from a sample of their first items.
_SAMPLE = 32

_getsizeof = sys.getsizeof
_FLAT = (str, bytes, bytearray, int, float, complex, bool, type(None))


def estimate_size(value: Any) -> int:
    """Estimate the memory held by ``value``, in bytes.

    Exact for flat objects (``sys.getsizeof``); for containers, the container plus
    its items, recursively to a small depth, sampling long containers so the cost of
    a write stays bounded. Shared objects are counted once per reference: an
    over-estimate, which errs on the side of staying inside the budget.
    """
    return _weigh(value, 0)


def _weigh(value: Any, depth: int) -> int:
    if isinstance(value, _FLAT):
        return _getsizeof(value)
    size = _getsizeof(value)
    if depth >= _MAX_DEPTH:
        return size
    if isinstance(value, dict):
        n = len(value)
        total = 0
        for i, (k, v) in enumerate(value.items()):
            if i == _SAMPLE:
                return size + total * n // _SAMPLE
            total += _weigh(k, depth + 1) + _weigh(v, depth + 1)
        return size + total
    if isinstance(value, (list, tuple, set, frozenset)):
        n = len(value)
        total = 0
        for i, item in enumerate(value):
            if i == _SAMPLE:
                return size + total * n // _SAMPLE
            total += _weigh(item, depth + 1)
        return size + total
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        size += _weigh(attrs, depth + 1)
    return size
