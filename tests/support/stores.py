"""In-process stand-ins for a shared backend that misbehaves, and backends of a
user's own that have only the protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachewise import Entry, MemoryBackend


class Unreachable(MemoryBackend):
    """A memory store whose invalidations fail while ``down`` (a stand-in for a
    shared backend that cannot be reached for deletes)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def delete(self, key: str) -> bool:
        if self.down:
            raise ConnectionError("down")
        return super().delete(key)

    def delete_many(self, keys: Any) -> int:
        if self.down:
            raise ConnectionError("down")
        return super().delete_many(keys)


class Tagless:
    """A sync backend of the user's own: the ``Backend`` protocol and nothing more
    (no tags, no leases)."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()

    def get(self, key: str) -> Entry | None:
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return self.inner.get_many(keys)

    def set(self, key: str, entry: Entry) -> None:
        self.inner.set(key, entry)

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        self.inner.set_many(items)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> int:
        return self.inner.delete_many(keys)

    def clear(self, prefix: str = "") -> int:
        return self.inner.clear(prefix)

    def close(self) -> None:
        self.inner.close()


class AsyncTagless:
    """The async counterpart of ``Tagless`` (the ``AsyncBackend`` protocol only)."""

    def __init__(self) -> None:
        self.inner = Tagless()

    async def get(self, key: str) -> Entry | None:
        return self.inner.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return self.inner.get_many(keys)

    async def set(self, key: str, entry: Entry) -> None:
        self.inner.set(key, entry)

    async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        self.inner.set_many(items)

    async def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return self.inner.delete_many(keys)

    async def clear(self, prefix: str = "") -> int:
        return self.inner.clear(prefix)

    async def aclose(self) -> None:
        self.inner.close()
