"""The miss sentinel. ``None`` is an ordinary cached value; ``MISSING`` means "not there"."""

from __future__ import annotations

import enum
from typing import Final, Literal


class _Missing(enum.Enum):
    # An enum member is a true singleton: it survives copy and pickle, and type
    # checkers can narrow ``x is MISSING`` through ``Literal[_Missing.MISSING]``.
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __str__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing.MISSING
MissingType = Literal[_Missing.MISSING]
