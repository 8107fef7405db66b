"""The rules both front ends follow once a flight is over (``after_wait``) and
before a background refresh runs (``refresh_granted``): pure functions, tested
directly."""

from __future__ import annotations

import pytest

from cachewise._core.entry import Entry
from cachewise._core.flights import JoinPoint, LoadState, Next, Served, after_wait, refresh_granted


def _entry(written_at: float = 0.0) -> Entry:
    return Entry("v", 100.0 + written_at, 200.0 + written_at, 90.0, written_at=written_at)


def _joined_before_start() -> JoinPoint:
    return JoinPoint(started=False, sealed=False, reads=0)


def _joined_mid_load() -> JoinPoint:
    return JoinPoint(started=True, sealed=False, reads=1)


def _joined_after_write() -> JoinPoint:
    return JoinPoint(started=True, sealed=True, reads=1)


@pytest.mark.parametrize("leased", [True, False])
def test_the_leader_takes_its_own_outcome(leased: bool) -> None:
    state = LoadState()
    state.confirmed = False
    assert after_wait(state, None, leased) is Next.TAKE


@pytest.mark.parametrize("joined", [None, JoinPoint(False, False, 0)])
def test_an_abandoned_flight_is_read_again_by_everyone(joined: JoinPoint | None) -> None:
    state = LoadState()
    state.abandoned = True
    assert after_wait(state, joined, leased=True) is Next.RETRY
    assert after_wait(state, joined, leased=False) is Next.RETRY


def test_without_leases_a_joiner_takes_any_value() -> None:
    state = LoadState()
    state.confirmed = False
    assert after_wait(state, _joined_after_write(), leased=False) is Next.TAKE


def test_errors_are_shared_even_when_a_value_would_not_be() -> None:
    state = LoadState()
    state.confirmed = False
    state.error = RuntimeError("boom")
    assert after_wait(state, _joined_after_write(), leased=True) is Next.TAKE


def test_a_confirmed_write_goes_to_joiners_that_came_before_it_was_sent() -> None:
    state = LoadState()
    state.started = state.sealed = True
    assert after_wait(state, _joined_mid_load(), leased=True) is Next.TAKE
    assert after_wait(state, _joined_after_write(), leased=True) is Next.RETRY


def test_an_unconfirmed_load_goes_only_to_joiners_that_came_before_it_began() -> None:
    state = LoadState()
    state.confirmed = False
    assert after_wait(state, _joined_before_start(), leased=True) is Next.TAKE
    assert after_wait(state, _joined_mid_load(), leased=True) is Next.RETRY


def test_a_served_read_goes_to_joiners_that_came_before_that_read_was_sent() -> None:
    state = LoadState()
    state.served = Served.HIT
    state.reads = state.served_read = 2
    assert after_wait(state, JoinPoint(False, False, 1), leased=True) is Next.TAKE
    assert after_wait(state, JoinPoint(False, False, 2), leased=True) is Next.RETRY


def test_a_joiner_of_a_flight_the_backend_failed_loads_without_the_backend() -> None:
    state = LoadState()
    state.confirmed = False
    state.unreached = True
    assert after_wait(state, _joined_mid_load(), leased=True) is Next.LOAD_UNWRITTEN
    # ... but only when it may not take the value anyway.
    assert after_wait(state, _joined_before_start(), leased=True) is Next.TAKE


def test_the_join_point_records_what_had_happened() -> None:
    state = LoadState()
    assert state.join_point() == JoinPoint(started=False, sealed=False, reads=0)
    state.started = True
    state.reads = 3
    assert state.join_point() == JoinPoint(started=True, sealed=False, reads=3)


def test_a_refresh_runs_when_nothing_newer_is_there() -> None:
    trigger = _entry()
    assert refresh_granted(trigger, trigger, lease=None)
    assert refresh_granted(trigger, None, lease=None)
    assert refresh_granted(trigger, trigger, lease=True)


def test_a_refresh_needs_the_lease_when_the_backend_has_leases() -> None:
    trigger = _entry()
    assert not refresh_granted(trigger, trigger, lease=False)


def test_a_refresh_of_an_entry_already_replaced_does_not_run() -> None:
    trigger = _entry()
    newer = _entry(written_at=5.0)
    assert not refresh_granted(trigger, newer, lease=None)
    assert not refresh_granted(trigger, newer, lease=True)
