"""The pure decision core: plain arithmetic, no clock, no I/O."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise._core.policy import (
    EARLY_HORIZON,
    Freshness,
    Policy,
    Read,
    classify,
    decide_read,
    jittered,
    make_entry,
    refresh_horizon,
    stale_servable,
)


def test_jitter_bounds() -> None:
    assert jittered(100, 0.1, 0.0) == pytest.approx(90)
    assert jittered(100, 0.1, 0.5) == pytest.approx(100)
    assert jittered(100, 0.1, 1.0 - 1e-12) == pytest.approx(110)
    assert jittered(100, 0.0, 0.7) == 100


@given(ttl=st.floats(0.001, 1e6), jitter=st.floats(0, 0.999), u=st.floats(0, 1, exclude_max=True))
def test_jittered_ttl_stays_in_its_window(ttl: float, jitter: float, u: float) -> None:
    got = jittered(ttl, jitter, u)
    assert ttl * (1 - jitter) - 1e-9 * ttl <= got <= ttl * (1 + jitter) + 1e-9 * ttl


def test_make_entry_times() -> None:
    policy = Policy(ttl=10, jitter=0, stale_ttl=5, early_refresh=2)
    entry = make_entry("v", now=100, ttl=None, delta=0.1, policy=policy, u=0.3)
    assert entry is not None
    assert (entry.expires_at, entry.stale_until) == (110, 115)
    assert entry.refresh_at == pytest.approx(110 - EARLY_HORIZON * 0.1 * 2)
    assert not entry.negative


def test_negative_entries_use_the_capped_negative_ttl_and_no_grace() -> None:
    policy = Policy(ttl=10, jitter=0, stale_ttl=5, negative_ttl=30)
    entry = make_entry(None, now=0, ttl=None, delta=1, policy=policy, u=0.5, negative=True)
    assert entry is not None
    assert entry.negative
    assert entry.expires_at == entry.stale_until == entry.refresh_at == 10
    assert not stale_servable(entry, 5)


def test_zero_lifetimes_store_nothing() -> None:
    assert make_entry(1, now=0, ttl=0, delta=0, policy=Policy(), u=0.5) is None
    policy = Policy(negative_ttl=0)
    assert make_entry(None, now=0, ttl=None, delta=0, policy=policy, u=0.5, negative=True) is None


def test_classify_boundaries() -> None:
    policy = Policy(ttl=10, jitter=0, stale_ttl=5, early_refresh=0)
    entry = make_entry("v", now=0, ttl=None, delta=1, policy=policy, u=0.5)
    assert entry is not None
    assert classify(entry, 9.999, 0, 1.0) is Freshness.FRESH
    assert classify(entry, 10, 0, 1.0) is Freshness.STALE
    assert classify(entry, 14.999, 0, 1.0) is Freshness.STALE
    assert classify(entry, 15, 0, 1.0) is Freshness.EXPIRED


@given(
    gap=st.floats(0, 50),
    delta=st.floats(0.001, 10),
    beta=st.floats(0.01, 5),
    u=st.floats(1e-300, 1.0),
)
def test_classify_is_xfetch(gap: float, delta: float, beta: float, u: float) -> None:
    """EARLY exactly when now - delta*beta*ln(u) >= expiry, except inside the
    truncation (gap > EARLY_HORIZON*delta*beta), where it is never EARLY."""
    policy = Policy(ttl=1000, jitter=0, early_refresh=beta)
    entry = make_entry("v", now=0, ttl=None, delta=delta, policy=policy, u=0.5)
    assert entry is not None
    now = entry.expires_at - gap
    if now >= entry.expires_at:  # the gap rounded away: not the fresh region
        return
    got = classify(entry, now, beta, u) is Freshness.EARLY
    formula = now - delta * beta * math.log(u) >= entry.expires_at
    if now < refresh_horizon(entry.expires_at, delta, beta):
        assert not got
    else:
        assert got == formula


def test_early_refresh_probability_matches_the_exponential() -> None:
    rng = random.Random(7)
    delta, beta, gap = 2.0, 1.0, 1.0  # P(early) = exp(-gap / (delta * beta))
    policy = Policy(ttl=100, jitter=0, early_refresh=beta)
    entry = make_entry("v", now=0, ttl=None, delta=delta, policy=policy, u=0.5)
    assert entry is not None
    n = 20_000
    early = sum(
        classify(entry, entry.expires_at - gap, beta, 1.0 - rng.random()) is Freshness.EARLY
        for _ in range(n)
    )
    assert early / n == pytest.approx(math.exp(-0.5), abs=0.015)


def test_decide_read_maps_freshness_to_actions() -> None:
    swr = Policy(ttl=10, jitter=0, stale_ttl=5, early_refresh=0)
    wait = Policy(ttl=10, jitter=0, stale_ttl=5, early_refresh=0, serve_stale=False)
    entry = make_entry("v", now=0, ttl=None, delta=0, policy=swr, u=0.5)
    assert decide_read(None, 0, 1.0, swr) is Read.LOAD
    assert decide_read(entry, 1, 1.0, swr) is Read.HIT
    assert decide_read(entry, 12, 1.0, swr) is Read.STALE_REFRESH
    assert decide_read(entry, 12, 1.0, wait) is Read.LOAD_OR_STALE
    assert decide_read(entry, 15, 1.0, swr) is Read.LOAD
    early = Policy(ttl=10, jitter=0, early_refresh=1)
    e2 = make_entry("v", now=0, ttl=None, delta=5, policy=early, u=0.5)
    assert decide_read(e2, 9.99, 1e-9, early) is Read.HIT_REFRESH


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", -1),
        ("stale_ttl", -0.5),
        ("negative_ttl", -3),
        ("early_refresh", -1),
        ("jitter", 1.0),
        ("jitter", -0.1),
        ("ttl", float("nan")),
    ],
)
def test_invalid_options_name_themselves(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        Policy(**{option: value})  # type: ignore[arg-type]


def test_options_must_be_numbers() -> None:
    with pytest.raises(TypeError, match="ttl"):
        Policy(ttl="60")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl"):
        Policy(ttl=True)
