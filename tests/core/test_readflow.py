"""``leased_read``, the sans-I/O lease flow, driven by hand: feed it replies and
times, check the steps it asks for and what it decides. No backend, no clock."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from cachewise._core.entry import Entry
from cachewise._core.policy import Policy
from cachewise._core.readflow import (
    LeaseReply,
    LoadStep,
    Observed,
    Outcome,
    ReadStep,
    Serve,
    Step,
    WaitStep,
    leased_read,
)

NOW = 1_000.0
#: No early refresh unless a test asks for it, and a draw that never picks one.
POLICY = Policy(ttl=60.0, jitter=0.0, stale_ttl=30.0, early_refresh=0.0)
U = 0.5

Flow = Generator[Step, Observed | None, Outcome]


def entry(expires_at: float, stale_until: float | None = None, **kw: float) -> Entry:
    stale = expires_at if stale_until is None else stale_until
    return Entry("v", expires_at, stale, kw.get("refresh_at", expires_at), kw.get("delta", 0.0))


FRESH = entry(NOW + 10)
STALE = entry(NOW - 5, NOW + 25)  # past its TTL, inside its grace window
EXPIRED = entry(NOW - 50, NOW - 20)

MISS_GRANTED = LeaseReply(None, True, 0.0)


def held(for_seconds: float) -> LeaseReply:
    return LeaseReply(None, False, for_seconds)


def observe(reply: LeaseReply, monotonic: float = 0.0, now: float = NOW, u: float = U) -> Observed:
    return Observed(reply, now, monotonic, u)


def send(flow: Flow, message: Observed | None) -> Step | Outcome:
    """The next step the flow asks for, or what it decided."""
    try:
        return flow.send(message)
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome


def start(
    policy: Policy = POLICY,
    wait_timeout: float = 5.0,
    found: Entry | None = None,
    stale: Entry | None = None,
) -> Flow:
    return leased_read(policy, wait_timeout, found, stale)


def test_the_first_read_asks_for_the_lease_on_a_miss() -> None:
    assert next(start()) == ReadStep("lease")


def test_a_miss_with_the_lease_granted_loads_and_writes() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(MISS_GRANTED)) == LoadStep(leased=True, stale=None)


def test_a_fresh_value_is_served() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(LeaseReply(FRESH, False, 0.0))) == Serve(
        FRESH, stale=False, refresh=False
    )


def test_a_hit_xfetch_picks_is_served_with_a_refresh() -> None:
    # 5 s before expiry, a load that took 1 s, beta 1: a draw of 1e-9 (-ln u ~ 20.7)
    # picks this hit for an early refresh; a draw of 1 never does.
    policy = Policy(ttl=60.0, jitter=0.0, early_refresh=1.0)
    near = entry(NOW + 5, refresh_at=NOW - 100, delta=1.0)
    flow = start(policy)
    next(flow)
    assert send(flow, observe(LeaseReply(near, False, 0.0), u=1e-9)) == Serve(
        near, stale=False, refresh=True
    )
    flow = start(policy)
    next(flow)
    assert send(flow, observe(LeaseReply(near, False, 0.0), u=1.0)) == Serve(
        near, stale=False, refresh=False
    )


def test_a_stale_value_is_served_with_a_refresh_when_stale_may_be_served() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(LeaseReply(STALE, False, 0.0))) == Serve(
        STALE, stale=True, refresh=True
    )


def test_a_stale_value_not_to_be_served_is_reloaded_and_kept_for_stale_if_error() -> None:
    policy = Policy(ttl=60.0, jitter=0.0, stale_ttl=30.0, early_refresh=0.0, serve_stale=False)
    flow = start(policy)
    next(flow)
    assert send(flow, observe(LeaseReply(STALE, False, 0.0))) == ReadStep("take")
    assert send(flow, observe(MISS_GRANTED)) == LoadStep(leased=True, stale=STALE)


def test_a_value_past_its_grace_window_is_reloaded_with_nothing_to_stand_in() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(LeaseReply(EXPIRED, False, 0.0))) == ReadStep("take")
    assert send(flow, observe(MISS_GRANTED)) == LoadStep(leased=True, stale=None)


def test_an_unreadable_value_is_reloaded_over() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(LeaseReply(None, False, 0.0, unreadable=True))) == ReadStep("take")
    assert send(flow, observe(MISS_GRANTED)) == LoadStep(leased=True, stale=None)


def test_an_entry_the_caller_already_found_unusable_asks_for_the_lease_at_once() -> None:
    flow = start(found=EXPIRED, stale=STALE)
    assert next(flow) == ReadStep("take")
    assert send(flow, observe(MISS_GRANTED)) == LoadStep(leased=True, stale=STALE)


def test_a_lease_held_elsewhere_means_waiting_then_reading_again() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(held(2.0), monotonic=100.0)) == WaitStep(2.0)
    assert send(flow, None) == ReadStep("lease")
    # The holder wrote: its value is served.
    assert send(flow, observe(LeaseReply(FRESH, False, 0.0), monotonic=100.5)) == Serve(
        FRESH, stale=False, refresh=False
    )


def test_after_waiting_a_take_becomes_a_lease_read_again() -> None:
    flow = start(found=EXPIRED)
    assert next(flow) == ReadStep("take")
    assert send(flow, observe(held(1.0))) == WaitStep(1.0)
    assert send(flow, None) == ReadStep("lease")


def test_a_released_lease_is_taken_by_the_next_read() -> None:
    flow = start()
    next(flow)
    send(flow, observe(held(2.0), monotonic=100.0))
    send(flow, None)
    assert send(flow, observe(MISS_GRANTED, monotonic=100.2)) == LoadStep(leased=True, stale=None)


def test_a_wait_never_outlasts_the_holders_lease_nor_the_wait_timeout() -> None:
    flow = start(wait_timeout=1.0)
    next(flow)
    # The holder's lease runs 5 s more; the caller may wait 1 s in all.
    assert send(flow, observe(held(5.0), monotonic=100.0)) == WaitStep(1.0)
    send(flow, None)
    # The deadline counts from the first time the lease was found held.
    assert send(flow, observe(held(4.4), monotonic=100.6)) == WaitStep(pytest.approx(0.4))
    send(flow, None)
    assert send(flow, observe(held(0.2), monotonic=100.7)) == WaitStep(pytest.approx(0.2))


def test_a_lease_about_to_expire_still_waits_a_moment() -> None:
    flow = start()
    next(flow)
    assert send(flow, observe(held(0.0))) == WaitStep(0.001)


def test_past_the_wait_timeout_it_loads_without_the_lease_and_without_writing() -> None:
    flow = start(wait_timeout=1.0)
    next(flow)
    send(flow, observe(held(5.0), monotonic=100.0))
    send(flow, None)
    assert send(flow, observe(held(4.0), monotonic=101.0)) == LoadStep(leased=False, stale=None)


def test_failing_open_keeps_the_stale_value_to_stand_in() -> None:
    policy = Policy(ttl=60.0, jitter=0.0, stale_ttl=30.0, early_refresh=0.0, serve_stale=False)
    flow = start(policy, wait_timeout=0.5)
    next(flow)
    assert send(flow, observe(LeaseReply(STALE, False, 0.0), monotonic=10.0)) == ReadStep("take")
    assert send(flow, observe(held(3.0), monotonic=10.0)) == WaitStep(0.5)
    send(flow, None)
    assert send(flow, observe(held(2.5), monotonic=10.5)) == LoadStep(leased=False, stale=STALE)


def test_a_zero_wait_timeout_loads_at_once() -> None:
    flow = start(wait_timeout=0.0)
    next(flow)
    assert send(flow, observe(held(3.0))) == LoadStep(leased=False, stale=None)


def test_the_flow_reads_the_times_it_is_sent_not_a_clock() -> None:
    # One entry, fresh or stale depending only on the "now" sent in.
    fresh_then_stale = entry(NOW + 10, NOW + 40)
    for now, stale in [(NOW, False), (NOW + 20, True)]:
        flow = start()
        next(flow)
        outcome = send(flow, observe(LeaseReply(fresh_then_stale, False, 0.0), now=now))
        assert outcome == Serve(fresh_then_stale, stale=stale, refresh=stale)
