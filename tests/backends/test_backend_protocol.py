"""The backend conformance suite (``cachewise.testing``) over every backend we ship,
the circuit breakers wrapped round them, and tag-less custom backends that implement
only the required protocol: what a user's backend must pass, ours pass too."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from cachewise.backends import (
    AsyncBackend,
    AsyncCircuitBreaker,
    AsyncRedisBackend,
    Backend,
    CircuitBreaker,
    LeaseBackend,
    MemoryBackend,
    RedisBackend,
    TagBackend,
)
from cachewise.testing import AsyncBackendConformance, BackendConformance, FakeClock
from cachewise.testing.conformance import SHORT_LEASE
from tests.support.redis_servers import RedisClusterProcess


class DictBackend:
    """A custom backend with the required methods only: no tags, no leases."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        return [self._data.get(key) for key in keys]

    def set(self, key: str, entry: Any) -> None:
        self._data[key] = entry

    def set_many(self, items: Sequence[tuple[str, Any]]) -> None:
        with self._lock:
            self._data.update(items)

    def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def delete_many(self, keys: Sequence[str]) -> int:
        with self._lock:
            return sum(self._data.pop(key, None) is not None for key in keys)

    def clear(self, prefix: str = "") -> int:
        with self._lock:
            doomed = [key for key in self._data if key.startswith(prefix)]
            for key in doomed:
                del self._data[key]
        return len(doomed)

    def close(self) -> None:
        self._data.clear()


class AsyncDictBackend:
    """``DictBackend`` for ``AsyncCache``: the required async methods only."""

    def __init__(self) -> None:
        self._sync = DictBackend()

    async def get(self, key: str) -> Any:
        return self._sync.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        return self._sync.get_many(keys)

    async def set(self, key: str, entry: Any) -> None:
        self._sync.set(key, entry)

    async def set_many(self, items: Sequence[tuple[str, Any]]) -> None:
        self._sync.set_many(items)

    async def delete(self, key: str) -> bool:
        return self._sync.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return self._sync.delete_many(keys)

    async def clear(self, prefix: str = "") -> int:
        return self._sync.clear(prefix)

    async def aclose(self) -> None:
        self._sync.close()


def test_the_custom_backends_have_no_capability_but_the_protocol() -> None:
    assert isinstance(DictBackend(), Backend)
    assert not isinstance(DictBackend(), (TagBackend, LeaseBackend))
    assert isinstance(AsyncDictBackend(), AsyncBackend)
    assert not isinstance(CircuitBreaker(DictBackend()), (TagBackend, LeaseBackend))


# -- sync ------------------------------------------------------------------------------


class TestMemoryBackend(BackendConformance):
    def make_backend(self) -> MemoryBackend:
        return MemoryBackend()

    @pytest.fixture
    def short_lease_backend(self) -> MemoryBackend:
        return MemoryBackend(lock_timeout=SHORT_LEASE)


class TestRedisBackend(BackendConformance):
    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[RedisBackend]:
        backend = RedisBackend(redis.Redis.from_url(redis_url), owns_client=True)
        yield backend
        backend.close()

    @pytest.fixture
    def short_lease_backend(self, redis_url: str) -> Iterator[RedisBackend]:
        client = redis.Redis.from_url(redis_url)
        backend = RedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True)
        yield backend
        backend.close()


class TestRedisClusterBackend(BackendConformance):
    @pytest.fixture
    def backend(
        self, redis_cluster: RedisClusterProcess, redis_cluster_url: str
    ) -> Iterator[RedisBackend]:
        # (redis_cluster_url empties the cluster for the test.)
        backend = RedisBackend(redis_cluster.client(), owns_client=True)
        yield backend
        backend.close()

    @pytest.fixture
    def short_lease_backend(
        self, redis_cluster: RedisClusterProcess, redis_cluster_url: str
    ) -> Iterator[RedisBackend]:
        client = redis_cluster.client()
        backend = RedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True)
        yield backend
        backend.close()


class TestBreakerOverMemory(BackendConformance):
    def make_backend(self) -> CircuitBreaker:
        return CircuitBreaker(MemoryBackend(), clock=FakeClock())

    @pytest.fixture
    def short_lease_backend(self) -> CircuitBreaker:
        return CircuitBreaker(MemoryBackend(lock_timeout=SHORT_LEASE))


class TestBreakerOverRedis(BackendConformance):
    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[CircuitBreaker]:
        backend = CircuitBreaker(RedisBackend(redis.Redis.from_url(redis_url), owns_client=True))
        yield backend
        backend.close()

    @pytest.fixture
    def short_lease_backend(self, redis_url: str) -> Iterator[CircuitBreaker]:
        client = redis.Redis.from_url(redis_url)
        backend = CircuitBreaker(RedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True))
        yield backend
        backend.close()


class TestTaglessCustomBackend(BackendConformance):
    def make_backend(self) -> DictBackend:
        return DictBackend()


class TestBreakerOverTaglessCustomBackend(BackendConformance):
    def make_backend(self) -> CircuitBreaker:
        return CircuitBreaker(DictBackend())


# -- async -----------------------------------------------------------------------------


class TestAsyncRedisBackend(AsyncBackendConformance):
    """On a redis.asyncio client alone: lease waiters poll (no sync client to
    listen for releases with)."""

    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[AsyncRedisBackend]:
        backend = AsyncRedisBackend(redis.asyncio.Redis.from_url(redis_url), owns_client=True)
        yield backend
        self.run(backend.aclose())

    @pytest.fixture
    def short_lease_backend(self, redis_url: str) -> Iterator[AsyncRedisBackend]:
        client = redis.asyncio.Redis.from_url(redis_url)
        backend = AsyncRedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True)
        yield backend
        self.run(backend.aclose())


class TestAsyncRedisBackendWithInvalidationClient(AsyncBackendConformance):
    """As ``from_url`` builds it: invalidations on a sync client in threads, and lease
    releases heard through it."""

    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[AsyncRedisBackend]:
        backend = AsyncRedisBackend(
            redis.asyncio.Redis.from_url(redis_url),
            invalidation_client=redis.Redis.from_url(redis_url, socket_timeout=5.0),
            owns_client=True,
        )
        yield backend
        self.run(backend.aclose())

    @pytest.fixture
    def short_lease_backend(self, redis_url: str) -> Iterator[AsyncRedisBackend]:
        backend = AsyncRedisBackend(
            redis.asyncio.Redis.from_url(redis_url),
            invalidation_client=redis.Redis.from_url(redis_url, socket_timeout=5.0),
            lock_timeout=SHORT_LEASE,
            owns_client=True,
        )
        yield backend
        self.run(backend.aclose())


class TestAsyncRedisClusterBackend(AsyncBackendConformance):
    @pytest.fixture
    def backend(
        self, redis_cluster: RedisClusterProcess, redis_cluster_url: str
    ) -> Iterator[AsyncRedisBackend]:
        client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.client_url)
        backend = AsyncRedisBackend(client, owns_client=True)
        yield backend
        self.run(backend.aclose())

    @pytest.fixture
    def short_lease_backend(
        self, redis_cluster: RedisClusterProcess, redis_cluster_url: str
    ) -> Iterator[AsyncRedisBackend]:
        client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.client_url)
        backend = AsyncRedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True)
        yield backend
        self.run(backend.aclose())


class TestAsyncBreakerOverRedis(AsyncBackendConformance):
    @pytest.fixture
    def backend(self, redis_url: str) -> Iterator[AsyncCircuitBreaker]:
        inner = AsyncRedisBackend(redis.asyncio.Redis.from_url(redis_url), owns_client=True)
        backend = AsyncCircuitBreaker(inner)
        yield backend
        self.run(backend.aclose())

    @pytest.fixture
    def short_lease_backend(self, redis_url: str) -> Iterator[AsyncCircuitBreaker]:
        client = redis.asyncio.Redis.from_url(redis_url)
        inner = AsyncRedisBackend(client, lock_timeout=SHORT_LEASE, owns_client=True)
        backend = AsyncCircuitBreaker(inner)
        yield backend
        self.run(backend.aclose())


class TestAsyncTaglessCustomBackend(AsyncBackendConformance):
    def make_backend(self) -> AsyncDictBackend:
        return AsyncDictBackend()


class TestAsyncBreakerOverTaglessCustomBackend(AsyncBackendConformance):
    def make_backend(self) -> AsyncCircuitBreaker:
        return AsyncCircuitBreaker(AsyncDictBackend())


def test_cachewise_testing_imports_without_pytest() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # as if it were not installed\n"
        "from cachewise.testing import FakeClock\n"
        "import cachewise.testing\n"
        "try:\n"
        "    cachewise.testing.BackendConformance\n"
        "except ImportError as exc:\n"
        "    assert 'needs pytest' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('the suite imported without pytest')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


BROKEN_BACKENDS = '''
import copy
import json
from cachewise import MemoryBackend
from cachewise.testing import BackendConformance


class Truncating(MemoryBackend):
    """Keeps only the first 32 characters of each key."""

    def get(self, key):
        return super().get(key[:32])

    def get_many(self, keys):
        return [self.get(k) for k in keys]

    def set(self, key, entry):
        super().set(key[:32], entry)

    def delete(self, key):
        return super().delete(key[:32])


class Jsonish(MemoryBackend):
    """Stores values through plain JSON (a tuple comes back a list)."""

    def set(self, key, entry):
        clone = copy.copy(entry)
        clone.value = json.loads(json.dumps(entry.value, default=str))
        super().set(key, clone)


class DropsNegative(MemoryBackend):
    """get_many forgets that an entry is negative."""

    def get_many(self, keys):
        out = []
        for entry in super().get_many(keys):
            if entry is not None and entry.negative:
                entry = copy.copy(entry)
                entry.negative = False
            out.append(entry)
        return out


class KeepsFirst(MemoryBackend):
    """set_many keeps the first entry of a repeated key."""

    def set_many(self, items):
        seen = {}
        for key, entry in items:
            seen.setdefault(key, entry)
        super().set_many(list(seen.items()))


class TestDropsNegative(BackendConformance):
    def make_backend(self):
        return DropsNegative()


class TestKeepsFirst(BackendConformance):
    def make_backend(self):
        return KeepsFirst()


class TestTruncating(BackendConformance):
    def make_backend(self):
        return Truncating()


class TestJsonish(BackendConformance):
    def make_backend(self):
        return Jsonish()
'''


def test_the_suite_fails_backends_that_mix_up_long_keys_or_change_value_types(
    tmp_path: Path,
) -> None:
    """The attack on issue 11 found both passing: every key in the suite was under
    32 characters, and every value JSON-native."""
    (tmp_path / "test_broken.py").write_text(BROKEN_BACKENDS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "test_broken.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    failed = {
        line.split("::")[-1].split(" ")[0]
        for line in done.stdout.splitlines()
        if line.startswith("FAILED")
    }
    assert "test_distinct_keys_name_distinct_entries" in failed, done.stdout[-3000:]
    assert "test_set_then_get_returns_each_value_with_its_type" in failed, done.stdout[-3000:]
    # The second attack's: get_many's fields, set_many's last entry.
    assert "test_get_many_returns_every_field_of_each_entry" in failed, done.stdout[-3000:]
    assert "test_set_many_of_a_repeated_key_keeps_the_last_entry" in failed, done.stdout[-3000:]
