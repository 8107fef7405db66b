"""Hypothesis state machine: ``Cache`` on ``MemoryBackend`` against a reference model.

The model is the simplest thing that could be right: an ordered dict of
(value, expiry, weight), LRU order, evicting from the front past either budget.
Time is a fake clock the machine advances.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cachewise import MISSING, Cache, MemoryBackend
from cachewise.backends._weigh import ENTRY_OVERHEAD
from cachewise.testing import FakeClock

KEYS = st.sampled_from([f"k{i}" for i in range(8)])
VALUES = st.text(alphabet="ab", max_size=300)
TTLS = st.sampled_from([None, 0, 1, 5, 20])


def weight(key: str, value: str) -> int:
    return ENTRY_OVERHEAD + sys.getsizeof(key) + len(value)


class CacheModel(RuleBasedStateMachine):
    @initialize(
        max_entries=st.integers(1, 6),
        max_bytes=st.integers(ENTRY_OVERHEAD + 60, 6 * (ENTRY_OVERHEAD + 200)),
    )
    def setup(self, max_entries: int, max_bytes: int) -> None:
        self.clock = FakeClock()
        self.backend = MemoryBackend(max_entries=max_entries, max_bytes=max_bytes, weigher=len)
        self.cache = Cache(
            self.backend, clock=self.clock, ttl=10, jitter=0, early_refresh=0, stale_ttl=0
        )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.model: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()
        self.loads = 0

    # -- model operations ---------------------------------------------------

    def _store(self, key: str, value: str, ttl: float | None) -> None:
        self.model.pop(key, None)
        lifetime = 10 if ttl is None else ttl
        if lifetime <= 0:
            return
        w = weight(key, value)
        if w > self.max_bytes:
            return
        self.model[key] = (value, self.clock() + lifetime, w)
        while len(self.model) > self.max_entries or self._bytes() > self.max_bytes:
            self.model.popitem(last=False)

    def _bytes(self) -> int:
        return sum(w for _, _, w in self.model.values())

    def _lookup(self, key: str) -> Any:
        if key not in self.model:
            return MISSING
        value, expires, _ = self.model[key]
        if self.clock() >= expires:
            del self.model[key]  # lazy expiry: an expired entry found is dropped
            return MISSING
        self.model.move_to_end(key)
        return value

    # -- rules ---------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.cache.set(key, value, ttl=ttl)
        self._store(key, value, ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.cache.get(key) == self._lookup(key)

    @rule(key=KEYS, value=VALUES)
    def get_or_load(self, key: str, value: str) -> None:
        expected = self._lookup(key)

        def loader() -> str:
            self.loads += 1
            return value

        loads = self.loads
        got = self.cache.get_or_load(key, loader)
        if expected is MISSING:
            assert got == value
            assert self.loads == loads + 1
            self._store(key, value, None)
        else:
            assert got == expected
            assert self.loads == loads

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) == (self.model.pop(key, None) is not None)

    @rule(seconds=st.sampled_from([0.5, 1, 4.99, 5, 10]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def same_keys_in_the_same_lru_order(self) -> None:
        assert list(self.backend._data) == list(self.model)

    @invariant()
    def budgets_hold(self) -> None:
        assert len(self.backend) <= self.max_entries
        assert self.backend.size_bytes <= self.max_bytes
        assert self.backend.size_bytes == self._bytes()

    def teardown(self) -> None:
        self.cache.close()


CacheModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_cache_matches_the_reference_model = CacheModel.TestCase
