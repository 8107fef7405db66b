"""The single-flight bookkeeping on its own: ``FlightTable`` (which loads are in
flight, and which may still write) and ``LoadState`` (whether a joiner may take a
load's outcome). Plain data, no threads: the front ends lock around it."""

from __future__ import annotations

import pytest

from cachewise._core.flights import Flight, FlightTable, JoinPoint, LoadState, Served

# -- FlightTable -------------------------------------------------------------------------


def test_a_started_flight_is_found_by_its_key() -> None:
    table: FlightTable[str] = FlightTable()
    flight = table.start("k", "handle", ("t1",))
    assert table.get("k") is flight
    assert "k" in table
    assert len(table) == 1
    assert (flight.key, flight.handle, flight.tags) == ("k", "handle", ("t1",))
    assert table.get("other") is None
    assert "other" not in table


def test_a_new_flight_may_write_and_has_no_leader_or_waiters_yet() -> None:
    flight = FlightTable[object]().start("k", object())
    assert flight.valid is True
    assert flight.ended is False
    assert flight.leader is None
    assert flight.waiters == 0


def test_finishing_a_flight_removes_it_and_marks_it_ended() -> None:
    table: FlightTable[int] = FlightTable()
    flight = table.start("k", 1)
    table.finish(flight)
    assert flight.ended is True
    assert table.get("k") is None
    assert len(table) == 0
    assert flight.valid is True  # finished, not revoked


def test_invalidate_detaches_the_flight_and_revokes_its_write() -> None:
    table: FlightTable[int] = FlightTable()
    flight = table.start("k", 1)
    assert table.invalidate("k") is flight
    assert flight.valid is False
    assert table.get("k") is None
    assert table.invalidate("k") is None  # nothing left to revoke


def test_callers_after_an_invalidation_start_a_new_flight_the_old_cannot_remove() -> None:
    table: FlightTable[int] = FlightTable()
    old = table.start("k", 1)
    table.invalidate("k")
    new = table.start("k", 2)
    table.finish(old)  # the old load ends after the new one started
    assert old.ended is True
    assert table.get("k") is new
    assert new.valid is True
    table.finish(new)
    assert table.get("k") is None


def test_invalidate_tagged_revokes_the_flights_carrying_any_of_the_tags() -> None:
    table: FlightTable[int] = FlightTable()
    a = table.start("a", 1, ("t1",))
    ab = table.start("ab", 2, ("t2", "t1"))
    b = table.start("b", 3, ("t2",))
    untagged = table.start("u", 4)
    revoked = table.invalidate_tagged(("t1", "t9"))
    assert sorted(f.key for f in revoked) == ["a", "ab"]
    assert (a.valid, ab.valid, b.valid, untagged.valid) == (False, False, True, True)
    assert table.get("a") is None
    assert table.get("ab") is None
    assert table.get("b") is b
    assert table.get("u") is untagged
    assert table.invalidate_tagged(("t1",)) == []


def test_invalidate_all_revokes_every_flight() -> None:
    table: FlightTable[int] = FlightTable()
    flights = [table.start(key, i, ("t",)) for i, key in enumerate("abc")]
    assert sorted(f.key for f in table.invalidate_all()) == ["a", "b", "c"]
    assert len(table) == 0
    assert not any(f.valid for f in flights)
    assert table.invalidate_all() == []


def test_flights_of_different_keys_are_independent() -> None:
    table: FlightTable[int] = FlightTable()
    a, b = table.start("a", 1), table.start("b", 2)
    table.invalidate("a")
    assert b.valid is True
    assert table.get("b") is b
    table.finish(b)
    assert a.ended is False


def test_a_flight_holds_whatever_handle_the_front_end_gives_it() -> None:
    handle = {"event": "anything"}
    flight: Flight[dict[str, str]] = Flight("k", handle)
    assert flight.handle is handle
    assert flight.tags == ()


# -- LoadState -------------------------------------------------------------------------


def test_a_fresh_load_state_is_an_unstarted_confirmed_load() -> None:
    state = LoadState()
    assert (state.served, state.negative, state.stale) == (Served.LOAD, False, None)
    assert (state.value, state.error, state.abandoned) == (None, None, False)
    assert (state.started, state.sealed, state.confirmed) == (False, False, True)
    assert (state.unreached, state.unwritten) == (False, False)
    assert (state.reads, state.served_read) == (0, 0)


def test_the_join_point_records_where_the_load_stood() -> None:
    state = LoadState()
    assert state.join_point() == JoinPoint(started=False, sealed=False, reads=0)
    state.started = True
    state.reads = 2
    assert state.join_point() == JoinPoint(started=True, sealed=False, reads=2)
    state.sealed = True
    assert state.join_point() == JoinPoint(started=True, sealed=True, reads=2)


def joined_at(*, started: bool, sealed: bool, reads: int = 0) -> JoinPoint:
    state = LoadState()
    state.started, state.sealed, state.reads = started, sealed, reads
    return state.join_point()


@pytest.mark.parametrize(
    ("started", "sealed", "safe"),
    [(False, False, True), (True, False, True), (True, True, False)],
)
def test_a_confirmed_write_is_safe_for_joiners_who_came_before_it_was_sent(
    started: bool, sealed: bool, safe: bool
) -> None:
    # The write held its lease: no delete landed between the grant and the write,
    # so a joiner that came before the write was sent may take the value.
    state = LoadState()
    state.started = state.sealed = True
    assert state.safe_for(joined_at(started=started, sealed=sealed)) is safe


@pytest.mark.parametrize(
    ("started", "sealed", "safe"),
    [(False, False, True), (True, False, False), (True, True, False)],
)
def test_an_unconfirmed_load_is_safe_only_for_joiners_who_came_before_it_began(
    started: bool, sealed: bool, safe: bool
) -> None:
    # Nothing proves no delete happened while it loaded: only a joiner that came
    # before the loader was called may take what it read.
    state = LoadState()
    state.started = state.sealed = True
    state.confirmed = False
    assert state.safe_for(joined_at(started=started, sealed=sealed)) is safe


@pytest.mark.parametrize("served", [Served.HIT, Served.STALE])
@pytest.mark.parametrize(
    ("reads_when_joined", "served_read", "safe"),
    [(0, 1, True), (1, 2, True), (1, 1, False), (2, 1, False), (0, 0, False)],
)
def test_a_value_read_rather_than_loaded_is_safe_if_read_after_the_joiner_came(
    served: Served, reads_when_joined: int, served_read: int, safe: bool
) -> None:
    state = LoadState()
    state.served = served
    state.started = True
    state.reads = max(reads_when_joined, served_read)
    state.served_read = served_read
    joined = joined_at(started=False, sealed=False, reads=reads_when_joined)
    assert state.safe_for(joined) is safe


def test_a_read_value_ignores_the_load_rules() -> None:
    # Joined before anything began (a loaded value would be safe), but the value
    # came from a read sent before the joiner arrived.
    state = LoadState()
    state.served = Served.HIT
    state.served_read = 1
    assert state.safe_for(joined_at(started=False, sealed=False, reads=1)) is False


def test_a_caller_back_from_an_earlier_flight_joins_a_later_one_as_at_its_birth() -> None:
    # The caller's call began (sequence 5) before this flight was made (7): every
    # read and load of it began after the call did, so it joins as at its birth
    # however far the load has gone.
    state = LoadState()
    state.born = 7
    state.started = state.sealed = True
    state.reads = 3
    assert state.join_point(since=5) == JoinPoint(started=False, sealed=False, reads=0)
    # A flight made before the call began: where it really stands.
    assert state.join_point(since=9) == JoinPoint(started=True, sealed=True, reads=3)
    # Unknown birth (0) is never after anyone's call.
    state.born = 0
    assert state.join_point(since=1) == JoinPoint(started=True, sealed=True, reads=3)
