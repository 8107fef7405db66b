"""Redis URL fixtures with patient client timeouts, for test tables whose failures
are all immediate (a refused key, an encoding error; never a timeout): longer
timeouts than the 250 ms default keep a loaded machine, or a cold cluster's first
reads, from counting a slow reply as a backend error and a hit as a miss.

A test module opts in by importing both fixtures by name (they override the
shared ones in conftest for that module only)::

    from .support import patient
    redis_url = patient.redis_url
    redis_cluster_url = patient.redis_cluster_url
"""

from __future__ import annotations

import pytest

PATIENT = "socket_timeout=2&connect_timeout=2&invalidation_timeout=2"


def _patient(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{PATIENT}"


@pytest.fixture
def redis_url(redis_url: str) -> str:
    """The shared server's URL (emptied), with patient client timeouts."""
    return _patient(redis_url)


@pytest.fixture
def redis_cluster_url(redis_cluster_url: str) -> str:
    """The shared cluster's URL (emptied), with patient client timeouts."""
    return _patient(redis_cluster_url)
