"""How many bytes a cached value holds: the default weigher of ``MemoryBackend``."""

from __future__ import annotations

import sys
import types
from collections import Counter, deque
from collections.abc import Callable
from functools import lru_cache
from itertools import islice
from math import ceil, gcd
from typing import Any

#: A weigher: the bytes a value holds, an ``int >= 0`` (see ``estimate_size``).
Weigher = Callable[[Any], int]

# Per-entry bookkeeping that is not the value: the Entry object, the OrderedDict
# node and the weight record. Measured on CPython 3.11 as ~200 bytes; rounded up.
ENTRY_OVERHEAD = 256

#: Values of up to this many objects are weighed exactly (every object once).
EXACT_OBJECTS = 20_000
#: Larger values are weighed from a sample of at most this many objects.
SAMPLED_OBJECTS = 5_000
# In a sampled walk, a child reaching at most this many objects is weighed by the
# (faster) exact walk; a bigger one gets its own sample.
_SMALL = 512

_getsizeof = sys.getsizeof

# Objects that refer to nothing worth following: weighed by getsizeof alone.
_LEAVES = frozenset({str, bytes, bytearray, int, float, complex, bool, type(None), range})

# Program structure a value may point at but does not own (and that would drag in
# whole modules): counted flat, never walked into.
_OPAQUE: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
    property,
    staticmethod,
    classmethod,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
)

# The builtin containers whose items are followed, most specific first (a
# subclass is read through its builtin base, so an overridden __iter__ or
# items() never runs).
_CONTAINERS: tuple[type, ...] = (dict, list, tuple, set, frozenset, deque)

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python

# How one class's instances are walked: (container base or None, whether instances
# have a __dict__, the slot descriptors of its Python-defined classes, opaque).
_Layout = tuple[type | None, bool, tuple[Any, ...], bool]


def estimate_size(value: Any) -> int:
    """Estimate the bytes ``value`` holds in memory; the default weigher.

    What it counts: every distinct object reachable from ``value``, once (by
    identity, so an object referenced twice, or a cycle, is counted once), each by
    ``sys.getsizeof``, which already includes the buffer of ``str``, ``bytes``,
    ``bytearray``, ``array.array``, a dict's or a set's table and a deque's
    blocks. It follows:

    * the keys and values of dicts, the items of lists, tuples, sets, frozensets
      and deques, subclasses included (read through the builtin base, so no
      overridden method runs);
    * an instance's ``__dict__`` and every slot across its classes' MRO
      (``@dataclass(slots=True)``, attrs slotted classes, plain ``__slots__``),
      skipping unset slots;
    * a ``memoryview``'s underlying object.

    It does not walk into classes, modules, functions, methods, code, frames or
    generators (counted flat: a value points at them, it does not own them), nor
    into objects implemented in C other than the containers above, which count as
    ``sys.getsizeof`` says: a numpy array counts its own buffer but a view of
    another array does not, and an object array does not count its items. Objects
    the value shares with the rest of the program (an interned string, a
    module-level constant) count as if the value owned them: an over-estimate.

    Exact up to a size: a value of up to ``EXACT_OBJECTS`` (20,000) objects is
    weighed exactly, at about a quarter of a microsecond per object (counting
    references here: ``[x] * 30_000`` is over the limit). A larger value is
    estimated from a sample of about ``SAMPLED_OBJECTS`` (5,000) objects more:

    * every container visited counts its full flat size (so a big list or dict
      is never under-counted itself); a container with more items than its share
      of the budget contributes an evenly spread sample of them (a list's or a
      dict's last item always; a set's first items in hash order, which for
      strings differs from one process to the next), scaled to its length;
    * an object that occurs more than once in a sample counts once, unscaled,
      and so does a sampled sequence's last item: a list of one 1 MiB buffer
      repeated a million times weighs its 8 MB of pointers plus 1 MiB;
    * the estimate is close (within a few percent in our tests) when a
      container's items are alike, as records, rows and strings are; a single
      outsized item among thousands of small siblings (not last) may be missed,
      or, when sampled, scaled up with them; and a chain nested deeper than the
      budget (a linked list of 100,000 nodes) is counted only down to it.

    Weighing is bounded either way: at most ``EXACT_OBJECTS`` plus about
    ``SAMPLED_OBJECTS`` objects visited (a few milliseconds), plus one pass at C
    speed over the items of a very large dict or deque to sample it.

    A custom ``weigher=`` (for values this cannot see into, or to trade accuracy
    for speed) must return an ``int >= 0`` (bytes; anything else is a
    ``ValueError`` at the write), be fast (it runs on every write), and be
    deterministic (the same value weighs the same). ``len`` of serialized bytes,
    or ``len`` of a ``str``, are good weighers.
    """
    if type(value) in _LEAVES:
        return _getsizeof(value)
    layouts: dict[type, _Layout] = {}
    total, scheduled = _exact(value, EXACT_OBJECTS, {}, layouts)
    if scheduled <= EXACT_OBJECTS:
        return total
    # Too many objects to weigh them all. What was counted so far is exact, so it
    # is a floor for the estimate.
    return max(total, ceil(_estimate_sampled(value, layouts)))


def _exact(
    value: Any, limit: int, seen: dict[int, None], layouts: dict[type, _Layout]
) -> tuple[int, int]:
    """Weigh ``value`` exactly, if it reaches at most ``limit`` objects.

    Objects whose ids are in ``seen`` are skipped (weighed already); the ids of
    those weighed here are added, in order (a dict used as an ordered set, so a
    caller can take them back with ``popitem``). Returns the bytes counted and the
    objects scheduled, which exceed ``limit`` if the walk stopped early: as soon
    as it knew it would exceed the limit.
    """
    getsizeof = _getsizeof
    leaves = _LEAVES
    stack = [value]
    pop = stack.pop
    push = stack.extend
    total = 0
    # Objects scheduled so far (children are counted when scheduled, shared or
    # not), so the walk, and the stack, stop growing at the limit.
    scheduled = 1
    while stack:
        obj = pop()
        oid = id(obj)
        if oid in seen:
            continue
        seen[oid] = None
        total += getsizeof(obj)
        cls = type(obj)
        if cls in leaves:
            continue
        # Exact dicts, lists and tuples inline: most of what a value is made of.
        if cls is dict:
            scheduled += 2 * len(obj)
            if scheduled > limit:
                return total, scheduled
            push(obj.keys())
            push(obj.values())
        elif cls is list or cls is tuple:
            scheduled += len(obj)
            if scheduled > limit:
                return total, scheduled
            push(obj)
        else:
            items, count, _ = _members(obj, layouts, limit - scheduled, sample=False)
            scheduled += count
            if scheduled > limit:
                return total, scheduled
            push(items)
    return total, scheduled


# Shared across calls: scanning a class's MRO costs microseconds, more than weighing
# a small value. Bounded, since it keeps the classes it has seen alive.
@lru_cache(maxsize=512)
def _layout(cls: type) -> _Layout:
    if issubclass(cls, _OPAQUE):
        return (None, False, (), True)
    base = next((b for b in _CONTAINERS if issubclass(cls, b)), None)
    slots = tuple(
        member
        for klass in cls.__mro__
        # Only classes defined in Python: their member descriptors are the
        # __slots__, each holding an object. A C type's members can be plain
        # numbers, read into temporaries whose ids would be reused.
        if klass.__flags__ & _HEAPTYPE
        for member in vars(klass).values()
        # __dict__ and __weakref__ are getset descriptors, so they never match.
        if type(member) is types.MemberDescriptorType
    )
    return (base, cls.__dictoffset__ != 0, slots, False)


def _members(
    obj: Any, layouts: dict[type, _Layout], room: int, sample: bool = True
) -> tuple[list[Any], int, int]:
    """The objects ``obj`` refers to: ``(items, count, fixed)``.

    ``count`` is how many there are. Up to about ``room`` of them are returned: a
    container with more items yields a sample spread over the whole of it, or none
    if not ``sample``. The last ``fixed`` items each stand for themselves (an
    instance's attributes, and a sampled sequence's last item: values are often
    built by appending); the others for the remaining ``count - fixed``.
    """
    cls: Any = type(obj)  # Any: typeshed does not see a class as Hashable (lru_cache)
    layout = layouts.get(cls)
    if layout is None:
        layout = layouts[cls] = _layout(cls)
    base, has_dict, slots, opaque = layout
    if opaque:
        return [], 0, 0
    extra: list[Any] = []
    if has_dict:
        try:
            attrs = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            pass
        else:
            if isinstance(attrs, dict):
                extra.append(attrs)
    for slot in slots:
        try:
            extra.append(slot.__get__(obj, cls))
        except AttributeError:  # an unset slot
            pass
    if cls is memoryview:
        try:
            extra.append(obj.obj)
        except ValueError:  # released
            pass
    if base is None:
        return extra, len(extra), len(extra)
    room = max(1, room - len(extra))
    if base is dict:
        n = dict.__len__(obj)
        count = 2 * n + len(extra)
        if 2 * n <= room:
            return [*dict.keys(obj), *dict.values(obj), *extra], count, len(extra)
        if not sample:
            return [], count, 0
        # A spread of items in insertion order (see _spread), and the last one,
        # which stands for itself. Copying the views is one C loop, far cheaper
        # than weighing them.
        all_keys, all_values = list(dict.keys(obj)), list(dict.values(obj))
        n = min(len(all_keys), len(all_values))  # (changed meanwhile by another thread)
        if n < 2:
            return [*all_keys[:n], *all_values[:n], *extra], count, len(extra)
        picks = _spread(n - 1, max(1, room // 2))
        keys = [all_keys[i] for i in picks]
        values = [all_values[i] for i in picks]
        extra += (all_keys[n - 1], all_values[n - 1])
        return [*keys, *values, *extra], count, len(extra)
    seq: Any = base  # list, tuple, set, frozenset or deque
    n = seq.__len__(obj)
    count = n + len(extra)
    if n <= room:
        return [*seq.__iter__(obj), *extra], count, len(extra)
    if not sample:
        return [], count, 0
    if seq is set or seq is frozenset:
        # A set iterates in hash order, unrelated to the order items were added
        # (strings' hashes are randomised): its first items are already spread,
        # and stepping through a big set's scattered table costs far more.
        items = list(islice(seq.__iter__(obj), room))
    else:
        # A spread of items (see _spread), and the last one, which stands for
        # itself (values are often built by appending). A deque indexes in O(n)
        # away from its ends: it is copied once (one C loop).
        whole: Any = list(seq.__iter__(obj)) if seq is deque else obj
        getitem = list.__getitem__ if seq is deque else seq.__getitem__
        n = len(whole)
        if n < 2:
            return [*whole, *extra], count, len(extra)
        items = [getitem(whole, i) for i in _spread(n - 1, room)]
        extra.append(getitem(whole, n - 1))
    return [*items, *extra], count, len(extra)


def _spread(n: int, m: int) -> list[int]:
    """``m`` indexes spread over ``[0, n)``: one in each of ``m`` equal strata, at
    a position within it taken from the golden-ratio sequence. An even step (every
    k-th item) lines up with periodic layouts, [small, big, small, big, ...], and
    then sees only one kind (a 90 MiB list weighed as 3 MiB); these positions are
    equidistributed modulo any period, so every kind is sampled in proportion."""
    width = n / m
    return [min(n - 1, int((i + (i * _GOLDEN) % 1.0) * width)) for i in range(m)]


_GOLDEN = 0.6180339887498949


class _Frame:
    """A container being weighed by ``_estimate_sampled``.

    Its items (all its children, or a spread sample of them) are split when it
    opens: leaves are weighed at once; objects that occur more than once among
    the items are shared, weighed once and not scaled; the other containers are
    weighed one by one in a spread order, as many as the allowance affords, and
    extrapolated to all of them. Then everything but the shared part is scaled
    from the items to all the children. Its weight is::

        flat + fixed + scale * (leaf_bytes + singles / taken_singles * sum)
    """

    __slots__ = (
        "allowance",
        "base",
        "count",
        "fixed",
        "flat",
        "items",
        "leaf_bytes",
        "scale",
        "shared",
        "spent",
        "stride",
        "sum",
        "taken",
    )

    def __init__(
        self,
        flat: int,
        scale: float,
        leaf_bytes: int,
        fixed: int,
        shared: list[Any],
        singles: list[Any],
        allowance: int,
        spent: int,
    ) -> None:
        self.flat = flat  # getsizeof of the container itself
        self.scale = scale  # children / items
        self.leaf_bytes = leaf_bytes  # its leaves that occur once
        self.fixed = float(fixed)  # its shared leaves, then its shared containers too
        self.shared = len(shared)  # the shared containers come first in items...
        self.items = shared + singles  # ...then those that occur once
        self.count = len(self.items)
        self.stride = _stride(len(singles))
        self.allowance = allowance  # objects it may visit, itself included
        self.base = spent  # objects visited when it opened: itself and its leaves
        self.spent = spent  # objects visited so far
        self.taken = 0  # containers weighed so far, shared ones first
        self.sum = 0.0  # the weight of the single ones among them

    def weight(self) -> float:
        inner = float(self.leaf_bytes)
        taken = self.taken - self.shared
        if taken > 0:
            inner += self.sum * (self.count - self.shared) / taken
        return self.flat + self.fixed + self.scale * inner


def _stride(count: int) -> int:
    """A step coprime to ``count`` near ``count / golden ratio``.

    Taking items ``0, s, 2s, ... (mod count)`` visits each once, and every prefix
    of that order is spread evenly over the whole container (the three-distance
    theorem), so a walk that stops early still saw a fair sample.
    """
    step = max(1, int(count * 0.6180339887))
    while gcd(step, count) > 1:
        step += 1
    return step


def _open(obj: Any, allowance: int, seen: dict[int, None], layouts: dict[type, _Layout]) -> _Frame:
    """A frame to weigh ``obj`` (not a leaf) in; its leaves are weighed here.

    Leaves (strings, numbers, ...) are weighed in order: cheap, and kinder to the
    CPU cache than the spread order.
    """
    items, children, alone = _members(obj, layouts, allowance - 1)
    getsizeof = _getsizeof
    leaves = _LEAVES
    # An object met more than once among the items is shared (``[row] * 1000``, a
    # pool of status strings): scaling it with the sample would count it over
    # and over, so it is counted once, as the exact walk would. So are the items
    # that stand for themselves.
    sampled = len(items) - alone
    # A dict's keys are distinct objects, and one that is also a value (``{s: s}``)
    # is not shared: only repeats among the values count.
    values = sampled // 2 if layouts[type(obj)][0] is dict else 0
    occurs = Counter(map(id, items[values:]))
    for item in items[sampled:]:
        occurs[id(item)] += 1
    leaf_bytes = fixed = 0
    shared: list[Any] = []
    singles: list[Any] = []
    for item in items:
        oid = id(item)
        if oid in seen:
            continue
        times = occurs[oid]
        if type(item) in leaves:
            seen[oid] = None
            if times > 1:
                fixed += getsizeof(item)
            else:
                leaf_bytes += getsizeof(item)
        elif times > 1:
            occurs[oid] = -1  # queued: once is enough
            shared.append(item)
        elif times >= 0:
            singles.append(item)
    scale = (children - alone) / sampled if sampled else 1.0
    spent = 1 + len(items) - len(shared) - len(singles)
    return _Frame(getsizeof(obj), scale, leaf_bytes, fixed, shared, singles, allowance, spent)


def _estimate_sampled(value: Any, layouts: dict[type, _Layout]) -> float:
    """Weigh a value of more than ``EXACT_OBJECTS`` objects from a sample.

    A depth-first walk with an explicit stack. Each container gets an allowance of
    objects to visit; it weighs its child containers in an evenly spread order,
    giving each a share of what is left, stops when the next one would likely not
    fit, and extrapolates what it saw (see ``_Frame``). Unused allowance goes back
    to the parent. Each object is counted once, as in the exact walk.
    """
    seen = {id(value): None}
    stack = [_open(value, SAMPLED_OBJECTS, seen, layouts)]
    while True:
        frame = stack[-1]
        # The frame's state in locals while it weighs children, saved back below.
        items = frame.items
        count = frame.count
        shared = frame.shared
        singles = count - shared
        stride = frame.stride
        allowance = frame.allowance
        taken = frame.taken
        spent = frame.spent
        opened: _Frame | None = None
        while taken < count:
            left = allowance - spent
            if left <= 0:
                break
            if taken < shared:
                child = items[taken]
            else:
                # Adaptive stop: after a few single children, go on only while
                # the next one is likely to fit (their mean cost so far).
                done = taken - shared
                if done >= 4 and left * done < spent - frame.base:
                    break
                child = items[shared + done * stride % singles]
            taken += 1
            spent += 1
            oid = id(child)
            if oid in seen:
                continue  # counted once, where first seen: it weighs 0 here
            # A child may use a quarter of what is left (an even split when fewer
            # than four remain): a big child among small ones is still sampled
            # deeply, and what a small child leaves unused stays with this frame
            # for its siblings.
            share = max(1, left // min(count - taken + 1, 4))
            # Most children of a big value are small (records): weigh them with
            # the fast exact walk, and open a frame only for one that is not.
            mark = len(seen)
            limit = min(share, _SMALL)
            size, scheduled = _exact(child, limit, seen, layouts)
            visited = len(seen) - mark
            spent += visited - 1
            if scheduled <= limit:
                _add(frame, taken, size)
                continue
            # Too big: forget what that walk saw (it stopped part-way, leaving
            # containers marked whose items it never reached), and sample it.
            # The wasted walk stays charged to this frame.
            for _ in range(visited):
                seen.popitem()
            seen[oid] = None
            sub = _open(child, max(1, share - visited), seen, layouts)
            if sub.count:
                opened = sub
                break
            _add(frame, taken, sub.weight())  # only leaves: weighed already
            spent += sub.spent
        frame.taken = taken
        frame.spent = spent
        if opened is not None:
            stack.append(opened)
            continue
        stack.pop()
        if not stack:
            return frame.weight()
        parent = stack[-1]
        _add(parent, parent.taken, frame.weight())
        parent.spent += spent


def _add(frame: _Frame, taken: int, weight: float) -> None:
    """Add the weight of ``frame``'s ``taken``-th child container."""
    if taken <= frame.shared:
        frame.fixed += weight
    else:
        frame.sum += weight
