"""``from_url``: the memory:// scheme and its options; clear errors otherwise."""

from __future__ import annotations

import asyncio

import pytest

from cachewise import AsyncCache, Cache, MemoryBackend


def test_memory_url_with_options_and_cache_keywords() -> None:
    cache = Cache.from_url("memory://?max_entries=1000&max_bytes=4096", ttl=5, namespace="ns")
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    assert (backend.max_entries, backend.max_bytes) == (1000, 4096)
    assert cache.policy.ttl == 5
    assert cache.namespace == "ns"
    cache.set("k", 1)
    cache.close()
    assert len(backend) == 0  # the cache owned the backend and closed it


def test_memory_url_defaults() -> None:
    with Cache.from_url("memory://") as cache:
        assert isinstance(cache.backend, MemoryBackend)


def test_async_from_url() -> None:
    async def main() -> None:
        cache = AsyncCache.from_url("memory://?max_entries=10", jitter=0)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        await cache.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://localhost", "scheme"),
        ("nonsense", "scheme"),
        ("memory://?max_items=3", "max_items"),
        ("memory://?max_entries=lots", "max_entries"),
        ("memory://?max_entries=0", "max_entries"),
        ("memory://?max_bytes=-1", "max_bytes"),
        ("memory://?max_entries=1&max_entries=2", "max_entries"),
        ("memory://somehost", "host"),
    ],
)
def test_bad_urls_are_value_errors_naming_the_problem(url: str, message: str) -> None:
    for cls in (Cache, AsyncCache):
        with pytest.raises(ValueError, match=message):
            cls.from_url(url)


def test_a_non_str_url_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Cache.from_url(42)  # type: ignore[arg-type]


def test_server_identity_names_the_server_not_the_options_or_the_password() -> None:
    from cachewise._url import server_identity

    assert server_identity("memory://?max_entries=10") is None
    plain = server_identity("redis://127.0.0.1:6379/0")
    assert plain is not None
    assert server_identity("redis://:secret@127.0.0.1:6379/0?socket_timeout=1") == plain
    assert server_identity("redis://127.0.0.1") == plain  # the default port and database
    assert "secret" not in str(server_identity("redis://user:secret@127.0.0.1/0"))
    assert server_identity("redis://127.0.0.1/1") != plain
    assert server_identity("redis://127.0.0.1:6380/0") != plain
    assert server_identity("rediss://127.0.0.1:6379/0") != plain
    assert server_identity("redis+cluster://127.0.0.1:6379") != plain
