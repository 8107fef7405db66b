"""After-commit invalidation failures are counted by the failing cache's
``CacheGroup``; ``invalidation_errors()`` reads the default group's count."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable

import pytest

from cachewise import Cache, CacheGroup
from cachewise.integrations import invalidation_errors
from cachewise.integrations.dbapi import transaction


class _Broken(Cache):
    """Deletes raise instead of degrading (the batch and the one-by-one retry)."""

    def delete_many(self, keys: Iterable[str]) -> int:
        raise ConnectionError("cache cluster on fire")

    def delete(self, key: str) -> bool:
        raise ConnectionError("cache cluster on fire")


def _commit_and_fail(cache: Cache, keys: list[str]) -> None:
    connection = sqlite3.connect(":memory:")
    try:
        with transaction(connection, cache, keys=keys):
            connection.execute("CREATE TABLE t (x INTEGER)")
    finally:
        connection.close()


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="cachewise")  # the failures are expected


def test_a_groups_caches_count_their_failures_in_that_group_only() -> None:
    mine, other = CacheGroup("mine"), CacheGroup("other")
    default = invalidation_errors()
    with _Broken(group=mine) as broken:
        _commit_and_fail(broken, ["a", "b"])
    assert mine.invalidation_errors == 2  # each name that still failed, once
    assert invalidation_errors(mine) == 2
    assert other.invalidation_errors == 0
    assert invalidation_errors() == default  # the default group saw nothing


def test_caches_without_a_group_count_in_invalidation_errors_as_before() -> None:
    before = invalidation_errors()
    with _Broken() as broken:
        assert broken.group is CacheGroup.default
        _commit_and_fail(broken, ["a"])
    assert invalidation_errors() == before + 1
    assert CacheGroup.default.invalidation_errors == before + 1
