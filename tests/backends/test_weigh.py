"""The default weigher: what ``estimate_size`` counts, and the byte budget it backs."""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise import Entry, MemoryBackend
from cachewise.backends import _weigh, estimate_size
from cachewise.backends._weigh import EXACT_OBJECTS, SAMPLED_OBJECTS

MiB = 2**20
KiB = 2**10


def entry(value: object) -> Entry:
    return Entry(value, 1e18, 1e18, 1e18)


def blob(i: int, size: int = MiB) -> bytes:
    """A distinct bytes object of ``size`` bytes (not a shared constant)."""
    return bytes([i % 256]) * size


def exact_size(value: Any) -> int:
    """The reference: every distinct object reachable through dicts, lists,
    tuples, sets, instance dicts and slots, once, by ``sys.getsizeof``."""
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            stack.extend(obj)
        else:
            for klass in type(obj).__mro__:
                for slot in vars(klass).get("__slots__", ()):
                    if slot in ("__dict__", "__weakref__"):
                        continue
                    private = slot.startswith("__") and not slot.endswith("__")
                    name = f"_{klass.__name__.lstrip('_')}{slot}" if private else slot
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
            if hasattr(obj, "__dict__"):
                stack.append(obj.__dict__)
    return total


@dataclass(slots=True)
class Blob:
    payload: bytes
    label: str = ""


@dataclass(slots=True)
class LabelledBlob(Blob):
    extra: object = None


class AttrsLike:
    """What ``attrs.define`` (slotted by default) generates: a class with a slot per
    field plus ``__weakref__``. attrs is not a dependency, so it is emulated."""

    __slots__ = ("__weakref__", "payload")

    def __init__(self, payload: object) -> None:
        self.payload = payload


class AttrsLikeChild(AttrsLike):
    __slots__ = ("__private", "unset")

    def __init__(self, payload: object, private: object) -> None:
        super().__init__(payload)
        self.__private = private


class Plain:
    def __init__(self, payload: object) -> None:
        self.payload = payload


# -- what is counted ------------------------------------------------------------


def test_a_slotted_dataclass_weighs_what_its_slots_hold() -> None:
    assert estimate_size(Blob(blob(1))) >= MiB
    # Slots inherited from a slotted base count too.
    assert estimate_size(LabelledBlob(blob(1), extra=blob(2))) >= 2 * MiB


def test_an_attrs_style_slotted_class_weighs_every_slot_across_its_mro() -> None:
    assert estimate_size(AttrsLike(blob(1))) >= MiB
    # A private (name-mangled) slot in a subclass, the base's slot, and an unset
    # slot that is skipped rather than failing.
    value = AttrsLikeChild(blob(1), blob(2))
    assert estimate_size(value) >= 2 * MiB
    assert estimate_size(value) == exact_size(value)


def test_an_instance_dict_counts_its_attributes() -> None:
    value = Plain(blob(1))
    assert estimate_size(value) >= MiB
    assert estimate_size(value) == exact_size(value)


def test_items_past_the_first_few_of_a_list_count() -> None:
    value: list[object] = list(range(1000))
    value += [blob(i, 100 * KiB) for i in range(10)]
    assert estimate_size(value) >= 1_000_000
    assert estimate_size(value) == exact_size(value)


def test_nesting_deeper_than_four_levels_still_counts_the_leaf() -> None:
    value: object = Blob(blob(1))
    for depth in range(10):
        value = [value] if depth % 2 else {"next": value}
    assert estimate_size(value) >= MiB


def test_a_chain_deeper_than_the_recursion_limit_is_weighed() -> None:
    value: object = blob(1)
    for _ in range(5 * sys.getrecursionlimit()):
        value = [value]
    assert estimate_size(value) >= MiB


def test_a_shared_object_is_counted_once() -> None:
    big = blob(1)
    value = [big] * 100
    assert estimate_size(value) == sys.getsizeof(value) + sys.getsizeof(big)
    row = {"payload": big}
    records = [row, Plain(row), (row, row)]
    assert estimate_size(records) < 2 * MiB


def test_a_shared_object_is_counted_once_in_a_sampled_container() -> None:
    big = blob(1)
    value = [big] * (10 * EXACT_OBJECTS)
    estimate = estimate_size(value)
    assert sys.getsizeof(value) + MiB <= estimate < sys.getsizeof(value) + 2 * MiB


def test_cycles_terminate() -> None:
    looped: list[object] = [blob(1)]
    looped.append(looped)
    assert estimate_size(looped) >= MiB
    mapping: dict[str, object] = {"payload": blob(1)}
    mapping["self"] = mapping
    assert estimate_size(mapping) >= MiB
    node = LabelledBlob(blob(1))
    node.extra = [node]
    assert estimate_size(node) >= MiB
    obj = Plain(blob(1))
    obj.payload = (obj, obj.payload, blob(2))
    assert estimate_size(obj) >= 2 * MiB


def test_builtin_container_subclasses_are_read_without_running_their_overrides() -> None:
    class Sneaky(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise AssertionError("__iter__ ran")

        def __len__(self) -> int:
            raise AssertionError("__len__ ran")

    value = Sneaky([blob(1)])
    value.note = blob(2)  # type: ignore[attr-defined]
    assert estimate_size(value) >= 2 * MiB


def test_other_containers_and_buffers_count_their_contents() -> None:
    for value in (
        deque([blob(1)]),
        frozenset([blob(1)]),
        {blob(1)},
        (blob(1),),
        memoryview(blob(1)),
        bytearray(blob(1)),
    ):
        assert estimate_size(value) >= MiB, type(value)


def test_classes_modules_and_functions_are_not_walked_into() -> None:
    # A value that points at program structure does not own it.
    assert estimate_size({"module": sys, "function": estimate_size, "class": dict}) < 10 * KiB


# -- values too big to walk: sampled --------------------------------------------


def test_a_long_list_is_sampled_across_its_whole_length() -> None:
    # Small items first, big ones after: weighing only the first items (as the
    # old weigher did) would miss almost everything.
    n = 10 * EXACT_OBJECTS
    value: list[object] = list(range(n // 2))
    value += [blob(i, KiB) for i in range(n // 2)]
    exact = exact_size(value)
    assert 0.9 * exact < estimate_size(value) < 1.1 * exact


def test_the_last_item_of_a_long_list_counts_once() -> None:
    value: list[object] = list(range(3 * EXACT_OBJECTS))
    value.append(blob(1))
    exact = exact_size(value)
    # Seen, and not scaled up with the sample as if every item were that big.
    assert exact <= estimate_size(value) < 1.1 * exact


def test_a_big_value_of_records_is_estimated_closely() -> None:
    value = [{"id": i, "name": f"user {i}", "tags": ["a", str(i)]} for i in range(30_000)]
    exact = exact_size(value)
    assert 0.9 * exact < estimate_size(value) < 1.1 * exact


def test_a_big_mapping_of_slotted_records_is_estimated_closely() -> None:
    value = {f"k{i}": LabelledBlob(blob(i, 100), extra=[i]) for i in range(20_000)}
    exact = exact_size(value)
    assert 0.9 * exact < estimate_size(value) < 1.1 * exact


def test_weighing_a_huge_value_visits_a_bounded_number_of_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    def counting_getsizeof(obj: object) -> int:
        nonlocal calls
        calls += 1
        return sys.getsizeof(obj)

    monkeypatch.setattr(_weigh, "_getsizeof", counting_getsizeof)
    chain: object = None
    for i in range(200_000):
        chain = [i, chain]
    shapes = [
        [{"id": i, "name": str(i)} for i in range(200_000)],
        [[str(i) for i in range(1000)] for _ in range(300)],
        {i: [i] for i in range(200_000)},
        chain,
    ]
    for value in shapes:
        calls = 0
        assert estimate_size(value) > 0
        assert calls <= EXACT_OBJECTS + 2 * SAMPLED_OBJECTS


def test_estimates_are_deterministic() -> None:
    value = [{"id": i, "blob": blob(i, i % 500)} for i in range(100_000)]
    assert estimate_size(value) == estimate_size(value)


# -- the byte budget ------------------------------------------------------------


def long_list_with_a_late_big_item(i: int, length: int) -> list[object]:
    return [*range(length), blob(i)]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda i: Blob(blob(i)), id="slotted-dataclass"),
        pytest.param(lambda i: AttrsLike(blob(i)), id="attrs-style-slots"),
        pytest.param(lambda i: long_list_with_a_late_big_item(i, 1000), id="list-big-late"),
        pytest.param(
            lambda i: long_list_with_a_late_big_item(i, EXACT_OBJECTS + 5000),
            id="sampled-list-big-last",
        ),
        pytest.param(lambda i: {"rows": [{"n": n} for n in range(40)], "z": blob(i)}, id="dict"),
    ],
)
def test_the_byte_budget_holds_wherever_a_value_keeps_its_bytes(make: Any) -> None:
    budget = 4 * MiB
    backend = MemoryBackend(max_bytes=budget)
    for i in range(96):
        backend.set(f"k{i}", entry(make(i)))
        assert backend.size_bytes <= budget
        assert len(backend) <= 4
    # Each value really holds over 1 MiB: at most three fit, and at least one does.
    assert 1 <= len(backend) <= 3
    assert backend.rejected == 0
    # What the held values really take stays inside the budget.
    held = [backend.get(f"k{i}") for i in range(96)]
    assert sum(exact_size(e.value) for e in held if e is not None) <= budget


# -- any JSON-like value --------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=8)
        | st.dictionaries(st.text(max_size=10), children, max_size=8)
        | st.tuples(children, children)
    ),
    max_leaves=60,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_estimate_size_is_exact_for_any_json_like_value(value: object) -> None:
    weight = estimate_size(value)
    assert type(weight) is int
    assert weight >= sys.getsizeof(value)
    assert weight == exact_size(value)
