"""In-process stand-ins for a shared backend that misbehaves."""

from __future__ import annotations

from typing import Any

from cachewise import MemoryBackend


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
