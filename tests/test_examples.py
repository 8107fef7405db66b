"""The examples in examples/ run and print what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_quickstart() -> None:
    out = run("quickstart.py").splitlines()
    assert out[0] == "{'id': 1, 'name': 'Ada'}"
    assert out[1] == out[0]
    assert out[2] == "{'id': 1, 'name': 'Ada Lovelace'}"
    assert out[3] == "None"
    assert out[4] == "Ada Lovelace Ada Lovelace"
    assert "CacheStats(" in out[5]


def test_async_quickstart() -> None:
    out = run("async_quickstart.py").splitlines()
    assert out[0] == "1000 answers from 1 service call"
    assert "coalesced=999" in out[1]
