"""The examples in examples/ run and print what they claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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


def test_fastapi_service_caches_pydantic_models_on_redis_and_invalidates_after_commit(
    redis_url: str,
) -> None:
    """The issue's example: a FastAPI endpoint returning a pydantic model, cached on
    Redis with the generic decorator, invalidated after an AsyncSession commit."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "fastapi_service.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        # (patient timeouts: a slow reply on a loaded machine would change the counts)
        env={**os.environ, "REDIS_URL": f"{redis_url}?socket_timeout=2&connect_timeout=2"},
    )
    out = result.stdout.splitlines()
    assert out == [
        "same cached product: True | database reads: 1",
        "price: 59.90",
        "after the write: 49.90",
        "search: [1, 2] | database reads: 3",
        "unknown product: 404",
        "hits=3 loads=4 encode_errors=0",
    ]
