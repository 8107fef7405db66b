"""The backend conformance suite: what every backend promises, tested on the backend
itself (not through ``Cache``), for a backend of your own as for ours.

Subclass ``BackendConformance`` (a sync ``Backend``, for ``Cache``) or
``AsyncBackendConformance`` (an ``AsyncBackend``, for ``AsyncCache``) in a pytest
module and say how to make a fresh, empty backend::

    from cachewise.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        def make_backend(self):
            return MyBackend()

pytest then runs every test of the suite on it. Backends that need other fixtures
(a server's URL) override the ``backend`` fixture instead: make the backend, yield
it, close it (for the async suite: ``self.run(backend.aclose())``). A lease backend
may also override ``short_lease_backend`` (one whose leases expire after
``SHORT_LEASE`` seconds) to run the lease expiry test.

What is tested: the required methods (``get``/``set``/``delete``, their many-key
forms, ``clear(prefix)``, closing), that entries come back with every field the
writer set, and the optional capabilities the backend has: tags (``TagBackend``),
leases (``LeaseBackend``: ``read_or_lease``, ``set_leased``, ``release``,
``wait``), in-process leases (``wait_async``), ``NonBlockingBackend``,
``BackendStats``. A capability test on a backend without the capability skips,
saying which protocol is missing.

The backend must be private to the test: ``clear()`` without a prefix is tested,
and it removes everything.

This module imports pytest; ``cachewise.testing`` imports it only when a suite is
asked for, and pytest is not a dependency of cachewise.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest

from cachewise._core.entry import Entry
from cachewise._core.readflow import LeaseReply
from cachewise.backends._protocol import (
    AsyncBackend,
    AsyncLeaseBackend,
    AsyncTagBackend,
    Backend,
    BackendStats,
    InProcessLeaseBackend,
    LeaseBackend,
    NonBlockingBackend,
    TagBackend,
)

__all__ = ["CAPABILITY_ABSENT", "SHORT_LEASE", "AsyncBackendConformance", "BackendConformance"]

#: Times on the writer's clock, in seconds: any clock will do, a backend never
#: compares them with its own (shared backends derive a server TTL from
#: ``stale_until - written_at``: an hour here).
WRITTEN_AT = 1_000_000.0

#: Lease tokens are "<owner>:<n>" (one owner per cache). Tokens of one owner are
#: one cache's: its lease left behind is an orphan the cache may take over.
TOKEN_A = "conformance-a:1"
TOKEN_A2 = "conformance-a:2"
TOKEN_B = "conformance-b:1"

#: The lease lifetime the ``short_lease_backend`` fixture gives (seconds).
SHORT_LEASE = 0.3

#: Ends the reason of every skip for a capability the backend does not have (a
#: test runner may tell these skips, which are by design, from others).
CAPABILITY_ABSENT = "(an optional capability: nothing to test)"

#: Values every serializer cachewise ships (JSON by default) stores faithfully.
VALUES: list[Any] = [
    None,
    0,
    False,
    "",
    [],
    {},
    1.5,
    -(2**53),
    "naïve ☃ 键 🔑",
    [1, "two", None, [3.0], {"four": True}],
    {"nested": {"list": [1, 2, {"x": None}], "text": "é"}, "n": 3},
    # The values applications return, which the default codec round-trips with
    # their types: a backend that stores through plain JSON turns a tuple into a
    # list and {1: "a"} into {"1": "a"}, and must fail here.
    (1, "two", (3.0,)),
    {1: "a", (2, 3): "b", None: "c"},
    {"a", "b"},
    frozenset({1, 2}),
    b"\x00\xffbytes",
    datetime.datetime(2026, 11, 30, 12, 0, 0, 123456),
    datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
    datetime.date(2026, 11, 30),
    datetime.time(23, 59, 58, 999),
    datetime.timedelta(days=2, microseconds=7),
    decimal.Decimal("12.3400"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [(1, 2), {"when": datetime.date(2026, 1, 1)}],
]

#: Keys that must each name their own entry: unicode, spaces, the characters a
#: Redis backend escapes or uses for hash tags and globs, and near-twins of them.
KEYS: list[str] = [
    "plain",
    "with space",
    "ключ",
    "键",
    "🔑",
    "e\u0301",  # e + combining acute: not the same key as the next one
    "\u00e9",
    "a}b",
    "a%7Db",
    "a%b",
    "a%25b",
    "{braced}",
    "glob*?[x]\\",
    "colon:sep:key",
    "K",
    "k",
    # Long keys that differ only at the end (a backend that truncates keys would
    # mix up two users' entries): cachewise sends keys of up to 200 bytes after
    # the namespace, and longer ones from a backend's own callers.
    "x" * 240 + "1",
    "x" * 240 + "2",
    "键" * 300 + "a",
    "键" * 300 + "b",
]


def make_entry(value: Any = "value", **fields: Any) -> Entry:
    """An entry with distinct, exactly representable times in every field, so a
    backend that drops or mixes up one is caught."""
    options: dict[str, Any] = {
        "expires_at": WRITTEN_AT + 300.0,
        "stale_until": WRITTEN_AT + 3600.0,
        "refresh_at": WRITTEN_AT + 290.0,
        "delta": 0.25,
        "negative": False,
        "written_at": WRITTEN_AT,
    }
    options.update(fields)
    return Entry(value, **options)


def entry_fields(entry: Entry | None) -> dict[str, Any] | None:
    """What a backend must preserve of an entry (the stamp's form is the backend's
    business, see ``Entry``), for comparing with ``==``."""
    if entry is None:
        return None
    return {
        "value": entry.value,
        "value type": type(entry.value),
        "expires_at": entry.expires_at,
        "stale_until": entry.stale_until,
        "refresh_at": entry.refresh_at,
        "delta": entry.delta,
        "negative": entry.negative,
        "written_at": entry.written_at,
        "tags": tuple(entry.tags),
    }


class _Suite:
    """The test bodies of both suites. A body calls the backend through
    ``self.call``: the sync suite returns the result as is, the async one runs the
    coroutine on the test's event loop, so one body tests both flavours."""

    #: The keys the suite writes start with this (but in the tests of keys that
    #: start with unusual characters, and of ``clear()`` without a prefix).
    prefix: ClassVar[str] = "cw-conformance:"

    #: Set by the flavour: the protocols a backend of that flavour implements.
    _base: ClassVar[type]
    _tags: ClassVar[type]
    _leases: ClassVar[type]

    def make_backend(self) -> Any:
        """Return a fresh, empty backend (override this, or the ``backend`` fixture)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define make_backend() or a 'backend' fixture"
        )

    def call(self, result: Any) -> Any:
        """The result of a backend call (awaited, for the async suite)."""
        raise NotImplementedError

    def key(self, name: str) -> str:
        """The full key the suite uses for ``name``."""
        return self.prefix + name

    def _wait_during(
        self, backend: Any, key: str, timeout: float, delay: float, action: Callable[[], Any]
    ) -> tuple[bool, float]:
        """``backend.wait(key, timeout)`` while ``action()`` runs after ``delay``
        seconds elsewhere (a thread, or a task); what wait returned, and how long
        it took."""
        raise NotImplementedError

    def _all_at_once(self, calls: list[Callable[[], Any]]) -> list[Any]:
        """The results of ``calls`` started together (threads, or tasks)."""
        raise NotImplementedError

    @pytest.fixture
    def short_lease_backend(self) -> Any:
        """A fresh backend whose leases expire after ``SHORT_LEASE`` seconds (as if
        their holder died), for the lease expiry test; ``None``: that test skips.
        Override it (yield the backend, close it) to run that test."""
        return None

    # -- capabilities ---------------------------------------------------------------

    def _need(self, backend: Any, protocol: type) -> None:
        if not isinstance(backend, protocol):
            name = type(backend).__name__
            pytest.skip(f"{name} does not implement {protocol.__name__} {CAPABILITY_ABSENT}")

    # -- the required methods -----------------------------------------------------------

    def test_implements_the_backend_protocol(self, backend: Any) -> None:
        assert isinstance(backend, self._base), f"not a {self._base.__name__}"

    def test_get_of_a_missing_key_is_none(self, backend: Any) -> None:
        assert self.call(backend.get(self.key("missing"))) is None

    def test_set_then_get_returns_each_value_with_its_type(self, backend: Any) -> None:
        for i, value in enumerate(VALUES):
            self.call(backend.set(self.key(f"v{i}"), make_entry(value)))
        for i, value in enumerate(VALUES):
            got = self.call(backend.get(self.key(f"v{i}")))
            assert got is not None, value
            assert (got.value, type(got.value)) == (value, type(value))

    def test_an_entry_comes_back_with_every_field_the_writer_set(self, backend: Any) -> None:
        entry = make_entry({"id": 7}, delta=1.125, refresh_at=WRITTEN_AT + 17.5)
        self.call(backend.set(self.key("fields"), entry))
        assert entry_fields(self.call(backend.get(self.key("fields")))) == entry_fields(entry)

    def test_a_negative_entry_stays_negative(self, backend: Any) -> None:
        entry = make_entry(None, negative=True, stale_until=WRITTEN_AT + 300.0)
        self.call(backend.set(self.key("neg"), entry))
        got = self.call(backend.get(self.key("neg")))
        assert entry_fields(got) == entry_fields(entry)

    def test_entries_past_their_times_are_still_returned(self, backend: Any) -> None:
        # Freshness is the front end's decision: the backend returns what it holds.
        # (Times long before any real clock's now; the entry lives 16 s from its
        # write by its own account, so a shared backend's TTL keeps it.)
        entry = make_entry("old", written_at=5.0, refresh_at=9.0, expires_at=10.0, stale_until=20.0)
        self.call(backend.set(self.key("old"), entry))
        assert entry_fields(self.call(backend.get(self.key("old")))) == entry_fields(entry)

    def test_set_replaces_the_entry(self, backend: Any) -> None:
        self.call(backend.set(self.key("r"), make_entry("first")))
        self.call(backend.set(self.key("r"), make_entry("second", delta=2.0)))
        got = self.call(backend.get(self.key("r")))
        assert got is not None
        assert (got.value, got.delta) == ("second", 2.0)

    def test_a_large_value_round_trips(self, backend: Any) -> None:
        value = "x" * 200_000 + "é"
        self.call(backend.set(self.key("large"), make_entry(value)))
        got = self.call(backend.get(self.key("large")))
        assert got is not None
        assert got.value == value

    def test_unusual_keys_round_trip(self, backend: Any) -> None:
        for name in KEYS:
            key = self.key(name)
            self.call(backend.set(key, make_entry(name)))
            got = self.call(backend.get(key))
            assert got is not None, name
            assert got.value == name
            assert self.call(backend.delete(key)) is True, name
            assert self.call(backend.get(key)) is None, name

    def test_keys_may_start_with_any_character(self, backend: Any) -> None:
        # Without the suite's prefix: what a key starts with can matter (a Redis
        # hash tag is what lies between the first "{" and the next "}").
        keys = ["}start", "{start", "{}", "}{", "%start", "*", "é"]
        self.call(backend.set_many([(key, make_entry(key)) for key in keys]))
        got = self.call(backend.get_many(keys))
        assert [e.value if e is not None else None for e in got] == keys
        assert self.call(backend.clear("}")) == 2
        assert self.call(backend.delete_many(keys)) == len(keys) - 2

    def test_distinct_keys_name_distinct_entries(self, backend: Any) -> None:
        keys = [self.key(name) for name in KEYS]
        self.call(backend.set_many([(key, make_entry(key)) for key in keys]))
        got = self.call(backend.get_many(keys))
        assert [e.value if e is not None else None for e in got] == keys

    def test_get_many_answers_in_order_with_none_for_misses(self, backend: Any) -> None:
        a, b, c = self.key("a"), self.key("b"), self.key("c")
        self.call(backend.set(a, make_entry("A")))
        self.call(backend.set(c, make_entry("C")))
        got = self.call(backend.get_many([c, b, a]))
        assert isinstance(got, list)
        assert [e.value if e is not None else None for e in got] == ["C", None, "A"]

    def test_get_many_of_a_repeated_key_answers_each_position(self, backend: Any) -> None:
        a, b = self.key("a"), self.key("b")
        self.call(backend.set(a, make_entry("A")))
        got = self.call(backend.get_many([a, b, a]))
        assert [e.value if e is not None else None for e in got] == ["A", None, "A"]

    def test_many_key_calls_of_no_keys_do_nothing(self, backend: Any) -> None:
        assert self.call(backend.get_many([])) == []
        self.call(backend.set_many([]))
        assert self.call(backend.delete_many([])) == 0

    def test_set_many_of_a_repeated_key_keeps_the_last_entry(self, backend: Any) -> None:
        key = self.key("twice")
        self.call(backend.set_many([(key, make_entry("first")), (key, make_entry("last"))]))
        got = self.call(backend.get(key))
        assert got is not None
        assert got.value == "last"

    def test_get_many_returns_every_field_of_each_entry(self, backend: Any) -> None:
        entries = [
            make_entry(None, negative=True, stale_until=WRITTEN_AT + 300.0),
            make_entry({"id": 7}, delta=1.125, refresh_at=WRITTEN_AT + 17.5),
        ]
        keys = [self.key(f"gm{i}") for i in range(len(entries))]
        for key, entry in zip(keys, entries, strict=True):
            self.call(backend.set(key, entry))
        got = self.call(backend.get_many(keys))
        assert [entry_fields(e) for e in got] == [entry_fields(e) for e in entries]

    def test_set_many_writes_every_entry(self, backend: Any) -> None:
        items = [(self.key(f"m{i}"), make_entry(i, delta=float(i))) for i in range(5)]
        self.call(backend.set_many(items))
        got = self.call(backend.get_many([key for key, _ in items]))
        assert [entry_fields(e) for e in got] == [entry_fields(e) for _, e in items]

    def test_delete_says_whether_the_key_was_there(self, backend: Any) -> None:
        key = self.key("d")
        self.call(backend.set(key, make_entry()))
        assert self.call(backend.delete(key)) is True
        assert self.call(backend.get(key)) is None
        assert self.call(backend.delete(key)) is False

    def test_delete_many_counts_the_keys_that_were_there(self, backend: Any) -> None:
        keys = [self.key(f"dm{i}") for i in range(4)]
        self.call(backend.set_many([(key, make_entry()) for key in keys[:3]]))
        assert self.call(backend.delete_many(keys)) == 3
        assert self.call(backend.get_many(keys)) == [None] * 4

    def test_delete_many_counts_a_repeated_key_once(self, backend: Any) -> None:
        key = self.key("twice")
        self.call(backend.set(key, make_entry()))
        assert self.call(backend.delete_many([key, key])) == 1

    def test_counts_and_answers_have_their_types(self, backend: Any) -> None:
        key = self.key("typed")
        self.call(backend.set(key, make_entry()))
        assert type(self.call(backend.delete(key))) is bool
        assert type(self.call(backend.delete_many([key]))) is int
        assert type(self.call(backend.clear(self.key("typed")))) is int
        assert type(self.call(backend.get_many([key]))) is list

    def test_clear_with_a_prefix_removes_only_that_prefix(self, backend: Any) -> None:
        inside = [self.key(f"p1:{i}") for i in range(3)]
        outside = [self.key("p2:0"), self.key("p10"), self.key("p1"), self.key("P1:0")]
        self.call(backend.set_many([(key, make_entry(key)) for key in inside + outside]))
        assert self.call(backend.clear(self.key("p1:"))) == 3
        assert self.call(backend.get_many(inside)) == [None] * 3
        kept = self.call(backend.get_many(outside))
        assert [e.value if e is not None else None for e in kept] == outside

    @pytest.mark.parametrize("prefix", ["g*", "g?", "g[ab]", "g\\", "g}", "g%", "g{", "é"])
    def test_a_clear_prefix_is_literal_not_a_pattern(self, backend: Any, prefix: str) -> None:
        names = [prefix + "1", "gx", "ga", "gb", "g", "g}x", "g%7D", "g%25", "e", "e\u0301"]
        keys = [self.key(name) for name in names]
        self.call(backend.set_many([(key, make_entry(key)) for key in keys]))
        doomed = [key.startswith(self.key(prefix)) for key in keys]
        assert self.call(backend.clear(self.key(prefix))) == sum(doomed)
        left = self.call(backend.get_many(keys))
        assert [e is None for e in left] == doomed

    def test_clear_without_a_prefix_removes_everything(self, backend: Any) -> None:
        keys = [self.key("c1"), "other-namespace:c2", "ключ"]
        self.call(backend.set_many([(key, make_entry()) for key in keys]))
        assert self.call(backend.clear()) == 3
        assert self.call(backend.get_many(keys)) == [None] * 3
        assert self.call(backend.clear()) == 0

    def test_many_keys(self, backend: Any) -> None:
        keys = [self.key(f"many:{i}") for i in range(1000)]
        self.call(backend.set_many([(key, make_entry(i)) for i, key in enumerate(keys)]))
        got = self.call(backend.get_many(keys))
        assert [e.value if e is not None else None for e in got] == list(range(1000))
        assert self.call(backend.delete_many(keys[:100])) == 100
        assert self.call(backend.clear(self.key("many:"))) == 900
        assert self.call(backend.get_many(keys[::97])) == [None] * len(keys[::97])

    # -- optional: stats and non-blocking -------------------------------------------------

    def test_evictions_are_a_count(self, backend: Any) -> None:
        self._need(backend, BackendStats)
        evictions = backend.evictions
        assert isinstance(evictions, int)
        assert evictions >= 0

    # -- optional: tags -----------------------------------------------------------------

    def _tagged(self, backend: Any, value: Any, tags: tuple[str, ...]) -> Entry:
        stamp = self.call(backend.tag_stamp(list(tags)))
        return make_entry(value, tags=tags, stamp=stamp)

    def _reads(self, backend: Any, key: str, tags: tuple[str, ...]) -> list[Any]:
        """What ``get``, ``get_tagged`` and ``get_many`` return for ``key``'s value."""
        found = [
            self.call(backend.get(key)),
            self.call(backend.get_tagged(key, list(tags))),
            self.call(backend.get_many([key]))[0],
        ]
        return [e.value if e is not None else None for e in found]

    def test_a_tagged_entry_is_read_back_with_its_tags(self, backend: Any) -> None:
        self._need(backend, self._tags)
        key, tags = self.key("t"), ("tag:a", "tag:ключ")
        self.call(backend.set(key, self._tagged(backend, "v", tags)))
        assert self._reads(backend, key, tags) == ["v", "v", "v"]
        got = self.call(backend.get(key))
        assert tuple(got.tags) == tags

    def test_invalidating_a_tag_makes_its_entries_misses(self, backend: Any) -> None:
        self._need(backend, self._tags)
        one, both = self.key("t1"), self.key("t2")
        self.call(backend.set(one, self._tagged(backend, 1, ("tag:a",))))
        self.call(backend.set(both, self._tagged(backend, 2, ("tag:b", "tag:a"))))
        self.call(backend.invalidate_tags(["tag:a"]))
        assert self._reads(backend, one, ("tag:a",)) == [None, None, None]
        assert self._reads(backend, both, ("tag:b", "tag:a")) == [None, None, None]

    def test_invalidating_other_tags_leaves_an_entry_alone(self, backend: Any) -> None:
        self._need(backend, self._tags)
        key = self.key("t")
        self.call(backend.set(key, self._tagged(backend, "v", ("tag:a",))))
        self.call(backend.set(self.key("u"), make_entry("untagged")))
        self.call(backend.invalidate_tags(["tag:b", "tag:c"]))
        assert self._reads(backend, key, ("tag:a",)) == ["v", "v", "v"]
        assert self._reads(backend, self.key("u"), ()) == ["untagged"] * 3

    def test_an_entry_stamped_before_an_invalidation_is_a_miss_when_written_after(
        self, backend: Any
    ) -> None:
        # The load began before the invalidation: its value may predate it.
        self._need(backend, self._tags)
        key = self.key("t")
        entry = self._tagged(backend, "loaded", ("tag:a",))
        self.call(backend.invalidate_tags(["tag:a"]))
        self.call(backend.set(key, entry))
        assert self._reads(backend, key, ("tag:a",)) == [None, None, None]

    def test_an_entry_stamped_after_an_invalidation_is_a_hit(self, backend: Any) -> None:
        self._need(backend, self._tags)
        key = self.key("t")
        self.call(backend.invalidate_tags(["tag:a"]))
        self.call(backend.set(key, self._tagged(backend, "new", ("tag:a",))))
        assert self._reads(backend, key, ("tag:a",)) == ["new", "new", "new"]

    def test_get_tagged_checks_the_entrys_own_tags_not_the_callers(self, backend: Any) -> None:
        # The caller's tags are a hint (Redis reads them in the same round trip):
        # an entry is valid while its own tags are.
        self._need(backend, self._tags)
        both, one = self.key("both"), self.key("one")
        self.call(backend.set(both, self._tagged(backend, "ab", ("tag:a", "tag:b"))))
        self.call(backend.set(one, self._tagged(backend, "a", ("tag:a",))))
        self.call(backend.invalidate_tags(["tag:b"]))
        assert self.call(backend.get_tagged(both, ["tag:a"])) is None
        got = self.call(backend.get_tagged(one, ["tag:a", "tag:b"]))
        assert got is not None
        assert got.value == "a"

    def test_get_many_mixes_tagged_and_untagged_entries(self, backend: Any) -> None:
        self._need(backend, self._tags)
        keys = [self.key(f"mix{i}") for i in range(4)]
        self.call(
            backend.set_many(
                [
                    (keys[0], make_entry("plain")),
                    (keys[1], self._tagged(backend, "gone", ("tag:a",))),
                    (keys[2], self._tagged(backend, "kept", ("tag:b",))),
                ]
            )
        )
        self.call(backend.invalidate_tags(["tag:a"]))
        got = self.call(backend.get_many(keys))
        assert [e.value if e is not None else None for e in got] == ["plain", None, "kept", None]

    def test_get_many_checks_every_tag_of_an_entry(self, backend: Any) -> None:
        self._need(backend, self._tags)
        keys = [self.key(f"multi{i}") for i in range(3)]
        self.call(
            backend.set_many(
                [
                    (keys[0], self._tagged(backend, "second gone", ("tag:a", "tag:b"))),
                    (keys[1], self._tagged(backend, "first gone", ("tag:b", "tag:c"))),
                    (keys[2], self._tagged(backend, "kept", ("tag:c", "tag:d"))),
                ]
            )
        )
        self.call(backend.invalidate_tags(["tag:b"]))
        got = self.call(backend.get_many(keys))
        assert [e.value if e is not None else None for e in got] == [None, None, "kept"]

    @pytest.mark.parametrize("tag", ["tag:}{%", "tag:%7D", "tag:*?[", "tag:ключ 🔑"], ids=repr)
    def test_unusual_tag_names_invalidate_only_themselves(self, backend: Any, tag: str) -> None:
        self._need(backend, self._tags)
        lookalikes = ["tag:}", "tag:%", "tag:{", "tag:}%7D", "tag:x", "tag:ключ"]
        mine = self.key("mine")
        self.call(backend.set(mine, self._tagged(backend, "mine", (tag,))))
        others = [(self.key(t), self._tagged(backend, t, (t,))) for t in lookalikes]
        self.call(backend.set_many(others))
        self.call(backend.invalidate_tags([tag]))
        assert self.call(backend.get(mine)) is None
        kept = self.call(backend.get_many([key for key, _ in others]))
        assert [e.value if e is not None else None for e in kept] == lookalikes

    def test_clear_does_not_undo_a_tag_invalidation(self, backend: Any) -> None:
        # A load stamped before the invalidation and written after clear() must
        # still be a miss: clear() removes entries, not the record of invalidations.
        self._need(backend, self._tags)
        key = self.key("t")
        entry = self._tagged(backend, "loaded", ("tag:a",))
        self.call(backend.invalidate_tags(["tag:a"]))
        self.call(backend.clear())
        self.call(backend.set(key, entry))
        assert self._reads(backend, key, ("tag:a",)) == [None, None, None]

    def test_invalidating_no_tags_does_nothing(self, backend: Any) -> None:
        self._need(backend, self._tags)
        key = self.key("t")
        self.call(backend.set(key, self._tagged(backend, "v", ("tag:a",))))
        self.call(backend.invalidate_tags([]))
        assert self._reads(backend, key, ("tag:a",)) == ["v", "v", "v"]

    # -- optional: leases -------------------------------------------------------------

    def _read(self, backend: Any, key: str, token: str, mode: str = "lease") -> LeaseReply:
        reply = self.call(backend.read_or_lease(key, token, mode))
        assert isinstance(reply, LeaseReply)
        return reply

    def test_wait_timeout_is_a_positive_number_of_seconds(self, backend: Any) -> None:
        self._need(backend, self._leases)
        timeout = backend.wait_timeout
        assert isinstance(timeout, (int, float))
        assert timeout > 0

    def test_a_miss_grants_the_lease_to_the_first_reader(self, backend: Any) -> None:
        self._need(backend, self._leases)
        reply = self._read(backend, self.key("l"), TOKEN_A)
        assert reply.entry is None
        assert reply.granted is True
        assert reply.unreadable is False

    def test_another_owner_is_told_the_lease_is_held_and_for_how_long(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        for mode in ("lease", "take", "refresh"):
            reply = self._read(backend, key, TOKEN_B, mode)
            assert (reply.entry, reply.granted) == (None, False), mode
            assert reply.held_for > 0, mode

    def test_a_hit_returns_the_entry_and_no_lease(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        entry = make_entry("there")
        self.call(backend.set(key, entry))
        reply = self._read(backend, key, TOKEN_A)
        assert entry_fields(reply.entry) == entry_fields(entry)
        assert reply.granted is False
        # No lease was taken: another reader is not told to wait.
        assert self._read(backend, key, TOKEN_B, "take").granted is True

    def test_take_grants_the_lease_whatever_the_value(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        self.call(backend.set(key, make_entry("old")))
        reply = self._read(backend, key, TOKEN_A, "take")
        assert (reply.entry, reply.granted) == (None, True)  # only "lease" reads a value

    def test_refresh_grants_the_lease_with_the_current_entry(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        entry = make_entry("current")
        self.call(backend.set(key, entry))
        reply = self._read(backend, key, TOKEN_A, "refresh")
        assert reply.granted is True
        assert entry_fields(reply.entry) == entry_fields(entry)

    def test_the_holders_write_lands_and_ends_the_lease(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        entry = make_entry("loaded")
        assert self.call(backend.set_leased(key, entry, TOKEN_A)) is True
        assert entry_fields(self.call(backend.get(key))) == entry_fields(entry)
        assert entry_fields(self._read(backend, key, TOKEN_B).entry) == entry_fields(entry)
        assert self._read(backend, key, TOKEN_B, "take").granted is True
        # Spent: the holder's lease is gone.
        assert self.call(backend.release(key, TOKEN_A)) is False

    def test_a_write_with_a_token_that_holds_no_lease_is_refused(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self.call(backend.set_leased(key, make_entry("nobody's"), TOKEN_A)) is False
        assert self._read(backend, key, TOKEN_A).granted
        assert self.call(backend.set_leased(key, make_entry("intruder"), TOKEN_B)) is False
        assert self.call(backend.get(key)) is None
        assert self.call(backend.set_leased(key, make_entry("holder"), TOKEN_A)) is True

    @pytest.mark.parametrize(
        "write", ["delete", "delete_many", "set", "set_many", "clear", "clear_prefix"]
    )
    def test_a_write_during_a_lease_revokes_it(self, backend: Any, write: str) -> None:
        # No stale set: a load that began before a write must not store what it read.
        self._need(backend, self._leases)
        key = self.key("l")
        self.call(backend.set(key, make_entry("before")))
        assert self._read(backend, key, TOKEN_A, "take").granted
        explicit = make_entry("explicit")
        calls: dict[str, Callable[[], Any]] = {
            "delete": lambda: backend.delete(key),
            "delete_many": lambda: backend.delete_many([key]),
            "set": lambda: backend.set(key, explicit),
            "set_many": lambda: backend.set_many([(key, explicit)]),
            "clear": backend.clear,
            "clear_prefix": lambda: backend.clear(self.key("l")),
        }
        self.call(calls[write]())
        assert self.call(backend.set_leased(key, make_entry("stale load"), TOKEN_A)) is False
        got = self.call(backend.get(key))
        assert (got.value if got is not None else None) == (
            "explicit" if write.startswith("set") else None
        )
        assert self.call(backend.release(key, TOKEN_A)) is False
        assert self._read(backend, key, TOKEN_B, "take").granted is True

    def test_a_released_lease_goes_to_the_next_reader(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self.call(backend.release(key, TOKEN_A)) is True
        assert self.call(backend.get(key)) is None
        assert self._read(backend, key, TOKEN_B).granted is True
        assert self.call(backend.release(key, TOKEN_A)) is False

    def test_only_the_holder_can_release(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self.call(backend.release(key, TOKEN_B)) is False
        assert self._read(backend, key, TOKEN_B).granted is False
        assert self.call(backend.set_leased(key, make_entry("holder"), TOKEN_A)) is True

    def test_a_lease_left_by_the_same_owner_is_taken_over(self, backend: Any) -> None:
        # A cache asks only when none of its own loads of the key is in flight, so
        # a lease under its owner name is an orphan (a release that failed).
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_A2).granted is True
        assert self.call(backend.set_leased(key, make_entry("orphan"), TOKEN_A)) is False
        assert self.call(backend.set_leased(key, make_entry("taker"), TOKEN_A2)) is True

    def test_clearing_another_prefix_leaves_a_lease_alone(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("lease:1")
        assert self._read(backend, key, TOKEN_A).granted
        assert self.call(backend.clear(self.key("lease:10"))) == 0
        assert self.call(backend.clear(self.key("other"))) == 0
        assert self._read(backend, key, TOKEN_B).granted is False
        assert self.call(backend.set_leased(key, make_entry("holder"), TOKEN_A)) is True

    def test_leases_are_per_key(self, backend: Any) -> None:
        self._need(backend, self._leases)
        assert self._read(backend, self.key("l1"), TOKEN_A).granted
        assert self._read(backend, self.key("l2"), TOKEN_B).granted
        assert self.call(backend.delete(self.key("l2"))) is False
        assert self.call(backend.set_leased(self.key("l1"), make_entry(1), TOKEN_A)) is True

    def test_of_many_simultaneous_readers_of_a_miss_exactly_one_gets_the_lease(
        self, backend: Any
    ) -> None:
        self._need(backend, self._leases)
        key = self.key("herd")

        def reader(i: int) -> Callable[[], Any]:
            return lambda: backend.read_or_lease(key, f"conformance-herd{i}:1", "lease")

        replies = self._all_at_once([reader(i) for i in range(8)])
        assert sorted(reply.granted for reply in replies) == [False] * 7 + [True]
        assert all(reply.entry is None for reply in replies)

    def test_a_lease_whose_holder_died_expires_and_is_taken_over(
        self, backend: Any, short_lease_backend: Any
    ) -> None:
        self._need(backend, self._leases)
        if short_lease_backend is None:
            pytest.skip("no short_lease_backend fixture: nothing to test lease expiry on")
        backend = short_lease_backend
        key = self.key("expiring")
        assert self._read(backend, key, TOKEN_A).granted
        reply = self._read(backend, key, TOKEN_B)
        assert reply.granted is False
        assert 0 < reply.held_for <= SHORT_LEASE + 0.05
        time.sleep(reply.held_for + 0.1)
        assert self._read(backend, key, TOKEN_B).granted is True
        # The dead holder's late write is refused: the lease is no longer its own.
        assert self.call(backend.set_leased(key, make_entry("late"), TOKEN_A)) is False
        assert self.call(backend.set_leased(key, make_entry("taker"), TOKEN_B)) is True

    def test_leases_work_on_unusual_keys(self, backend: Any) -> None:
        self._need(backend, self._leases)
        for name in KEYS:
            key = self.key(name)
            assert self._read(backend, key, TOKEN_A).granted, name
            assert self._read(backend, key, TOKEN_B).granted is False, name
            assert self.call(backend.set_leased(key, make_entry(name), TOKEN_A)) is True, name
            found = self._read(backend, key, TOKEN_B).entry
            assert found is not None, name
            assert found.value == name
            assert self._read(backend, key, TOKEN_B, "take").granted, name
        # clear() finds each lease by its key's prefix, and revokes it.
        assert self.call(backend.clear(self.prefix)) == len(KEYS)
        for name in KEYS:
            key = self.key(name)
            assert self.call(backend.set_leased(key, make_entry("late"), TOKEN_B)) is False, name
            assert self.call(backend.get(key)) is None, name

    @pytest.mark.parametrize("name", ["a}b", "a%7Db", "glob*?[x]\\", "🔑"], ids=repr)
    def test_clear_wakes_the_waiters_of_unusual_keys(self, backend: Any, name: str) -> None:
        self._need(backend, self._leases)
        key = self.key(name)
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_B).granted is False
        _, took = self._wait_during(backend, key, 10.0, 0.1, lambda: backend.clear(self.prefix))
        assert took < 5.0

    # wait's contract, as the front ends use it: it may return early, and callers
    # read again whatever it returned (a backend that cannot hear releases polls);
    # it must return soon after the lease ends, and never outlast its timeout.

    def test_wait_returns_soon_after_the_lease_ends(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_B).granted is False  # now a waiter
        _, took = self._wait_during(backend, key, 10.0, 0.1, lambda: backend.release(key, TOKEN_A))
        assert took < 5.0
        assert self._read(backend, key, TOKEN_B).granted is True

    @pytest.mark.parametrize(
        "write",
        ["delete", "set", "clear_prefix", "set_leased", "delete_many", "set_many", "clear_all"],
    )
    def test_the_end_of_a_lease_by_a_write_ends_the_wait(self, backend: Any, write: str) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_B).granted is False
        calls: dict[str, Callable[[], Any]] = {
            "delete": lambda: backend.delete(key),
            "set": lambda: backend.set(key, make_entry("explicit")),
            "clear_prefix": lambda: backend.clear(self.key("l")),
            "set_leased": lambda: backend.set_leased(key, make_entry("loaded"), TOKEN_A),
            # The many-key forms revoke leases too, and must wake their waiters (a
            # backend that forgot cost a waiter its whole wait: 10 s, not 0.1 s).
            "delete_many": lambda: backend.delete_many([self.key("other"), key]),
            "set_many": lambda: backend.set_many([(key, make_entry("explicit"))]),
            "clear_all": backend.clear,
        }
        _, took = self._wait_during(backend, key, 10.0, 0.1, calls[write])
        assert took < 5.0

    def test_wait_gives_up_at_its_timeout(self, backend: Any) -> None:
        self._need(backend, self._leases)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_B).granted is False
        _, took = self._wait_during(backend, key, 0.3, 0.0, lambda: None)
        assert took < 3.0
        assert self._read(backend, key, TOKEN_B).granted is False  # still held

    def test_wait_without_a_lease_returns_at_once(self, backend: Any) -> None:
        self._need(backend, self._leases)
        _, took = self._wait_during(backend, self.key("free"), 10.0, 0.0, lambda: None)
        assert took < 2.0

    def test_a_tagged_lease_write_after_its_tag_is_invalidated_is_refused(
        self, backend: Any
    ) -> None:
        self._need(backend, self._leases)
        self._need(backend, self._tags)
        key = self.key("lt")
        entry = self._tagged(backend, "loaded", ("tag:a",))
        assert self._read(backend, key, TOKEN_A).granted
        self.call(backend.invalidate_tags(["tag:a"]))
        assert self.call(backend.set_leased(key, entry, TOKEN_A)) is False
        assert self.call(backend.get(key)) is None

    def test_a_lease_read_of_an_invalidated_entry_is_a_miss(self, backend: Any) -> None:
        self._need(backend, self._leases)
        self._need(backend, self._tags)
        key = self.key("lt")
        self.call(backend.set(key, self._tagged(backend, "old", ("tag:a",))))
        self.call(backend.invalidate_tags(["tag:a"]))
        reply = self._read(backend, key, TOKEN_A)
        assert reply.entry is None
        # Either the lease at once, or "unreadable": the caller then takes it.
        assert reply.granted or reply.unreadable


class BackendConformance(_Suite):
    """The conformance suite for a sync ``Backend`` (for ``Cache``).

    Subclass it in a pytest module (name the subclass ``Test...``) and define
    ``make_backend()`` returning a fresh, empty backend, or override the
    ``backend`` fixture. Capability tests skip on a backend without the capability.
    """

    _base = Backend
    _tags = TagBackend
    _leases = LeaseBackend

    @pytest.fixture
    def backend(self) -> Iterator[Any]:
        """A fresh backend from ``make_backend()``, closed after the test."""
        backend = self.make_backend()
        yield backend
        backend.close()

    def call(self, result: Any) -> Any:
        """A sync backend's result is the result."""
        return result

    def _wait_during(
        self, backend: Any, key: str, timeout: float, delay: float, action: Callable[[], Any]
    ) -> tuple[bool, float]:
        timer = threading.Timer(delay, action)
        timer.start()
        try:
            start = time.monotonic()
            ended = backend.wait(key, timeout)
            took = time.monotonic() - start
        finally:
            timer.join()
        assert isinstance(ended, bool)
        return ended, took

    def _all_at_once(self, calls: list[Callable[[], Any]]) -> list[Any]:
        barrier = threading.Barrier(len(calls))
        results: list[Any] = [None] * len(calls)

        def run(i: int) -> None:
            barrier.wait()
            results[i] = calls[i]()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def test_a_nonblocking_backend_says_so(self, backend: Any) -> None:
        self._need(backend, NonBlockingBackend)
        assert isinstance(backend.nonblocking, bool)

    def test_wait_async_returns_soon_after_a_release_in_another_thread(self, backend: Any) -> None:
        self._need(backend, InProcessLeaseBackend)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        assert self._read(backend, key, TOKEN_B).granted is False

        async def waiting() -> tuple[bool, float]:
            timer = threading.Timer(0.1, lambda: backend.release(key, TOKEN_A))
            timer.start()
            start = time.monotonic()
            ended = await backend.wait_async(key, 10.0)
            took = time.monotonic() - start
            await asyncio.to_thread(timer.join)
            return ended, took

        ended, took = asyncio.run(waiting())
        assert ended is True
        assert took < 5.0
        assert self._read(backend, key, TOKEN_B).granted is True

    def test_wait_async_gives_up_at_its_timeout(self, backend: Any) -> None:
        self._need(backend, InProcessLeaseBackend)
        key = self.key("l")
        assert self._read(backend, key, TOKEN_A).granted
        start = time.monotonic()
        assert asyncio.run(backend.wait_async(key, 0.2)) is False
        assert time.monotonic() - start < 3.0


class AsyncBackendConformance(_Suite):
    """The conformance suite for an ``AsyncBackend`` (for ``AsyncCache``).

    As ``BackendConformance``: subclass it and define ``make_backend()`` (called
    outside any event loop), or override the ``backend`` fixture. Each test runs
    on an event loop of its own; ``self.run(coroutine)`` runs on it (a fixture of
    yours closes its backend with ``self.run(backend.aclose())``). No pytest
    plugin is needed.
    """

    _base = AsyncBackend
    _tags = AsyncTagBackend
    _leases = AsyncLeaseBackend

    _loop: asyncio.AbstractEventLoop | None = None

    @pytest.fixture(autouse=True)
    def _event_loop(self) -> Iterator[None]:
        # Autouse: set up before, and closed after, the backend fixture.
        yield
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @pytest.fixture
    def backend(self) -> Iterator[Any]:
        """A fresh backend from ``make_backend()``, closed after the test."""
        backend = self.make_backend()
        yield backend
        self.run(backend.aclose())

    def run(self, coroutine: Awaitable[Any]) -> Any:
        """Run ``coroutine`` to its end on this test's event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def call(self, result: Any) -> Any:
        """Await the backend call's coroutine on this test's event loop."""
        assert asyncio.iscoroutine(result) or isinstance(result, Awaitable), (
            f"an async backend call returned {result!r}, not an awaitable"
        )
        return self.run(result)

    def _wait_during(
        self, backend: Any, key: str, timeout: float, delay: float, action: Callable[[], Any]
    ) -> tuple[bool, float]:
        async def later() -> None:
            await asyncio.sleep(delay)
            result = action()
            if isinstance(result, Awaitable):
                await result

        async def waiting() -> tuple[bool, float]:
            task = asyncio.ensure_future(later())
            try:
                start = time.monotonic()
                ended = await backend.wait(key, timeout)
                took = time.monotonic() - start
            finally:
                await task
            return ended, took

        ended, took = self.run(waiting())
        assert isinstance(ended, bool)
        return ended, took

    def _all_at_once(self, calls: list[Callable[[], Any]]) -> list[Any]:
        async def together() -> list[Any]:
            return list(await asyncio.gather(*(call() for call in calls)))

        return list(self.run(together()))
