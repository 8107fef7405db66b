"""Running a configuration in a worker process of its own, faults included.

Each configuration runs in a process of its own (forked from a fork server that
imported everything once), so a hang, a leaked thread or a wedged fork never
reaches the caller: the worker's watchdog reports a late call with every stack and
the worker ends itself; if even that fails, ``faulthandler`` dumps the stacks and
ends it, and past a hard limit the caller kills it.

The caller (pytest, or ``python -m tests.history``) owns the Redis servers and
injects the faults: it waits for the worker's "ready" file, then kills and restarts
the server, or black-holes the proxy in front of it, on a schedule relative to the
run's start.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.history.checker import Report, check
from tests.history.configs import Config
from tests.history.processes import run_config
from tests.history.recorder import Recorder, now
from tests.history.workloads import Env

if TYPE_CHECKING:
    from tests.support.faults import LatencyProxy
    from tests.support.redis_servers import RedisServer

__all__ = ["Fault", "Outcome", "fault_target", "outcome_of", "run_isolated"]

ROOT = Path(__file__).resolve().parents[2]
#: (run start on the shared monotonic clock, run length): injects one fault.
Fault = Callable[[float, float], None]
#: Violations quoted in an outcome (all are counted).
EXAMPLES = 5


@dataclass
class Outcome:
    """What one configuration's run found (JSON-friendly, from worker to caller)."""

    config: str
    seconds: float = 0.0
    worlds: int = 1
    operations: int = 0
    reads: int = 0
    writes: int = 0
    violations: int = 0
    held: int = 0
    exempted: int = 0
    examples: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    slowest: list[str] = field(default_factory=list)  # the slowest calls, for soft hangs
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.violations or self.hangs or self.errors)

    def summary(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{self.config:<44} {verdict:>4}  {self.operations:>7} ops {self.reads:>7} reads "
            f"{self.writes:>6} writes  {self.violations:>5} violations  "
            f"{len(self.hangs):>2} hangs  {len(self.errors):>3} errors  "
            f"({self.held} held, {self.exempted} exempt, {self.elapsed:.1f} s)"
        )

    def describe(self) -> str:
        """The summary, then examples of every kind of failure."""
        lines = [self.summary(), "slowest calls: " + "; ".join(self.slowest)]
        if self.examples:
            lines.append(f"violations (first {len(self.examples)} of {self.violations}):")
            lines += [f"  - {example}" for example in self.examples]
        for hang in self.hangs[:3]:
            lines.append("hang: " + hang)
        if self.errors:
            counts = collections.Counter(_strip_actor(error) for error in self.errors)
            lines.append(f"errors ({len(self.errors)}):")
            lines += [f"  - {n} x {text}" for text, n in counts.most_common(5)]
        return "\n".join(lines)


def _strip_actor(error: str) -> str:
    """An error without who raised it, to count errors of one kind together."""
    head, sep, tail = error.partition(" by ")
    _, sep2, rest = tail.partition(") raised ")
    return f"{head} raised {rest}" if sep and sep2 else error


def outcome_of(config: Config, worlds: list[Recorder], seconds: float, elapsed: float) -> Outcome:
    """Check every recorded world and sum them up."""
    report = Report()
    hangs: list[str] = []
    errors: list[str] = []
    calls: list[tuple[float, str]] = []
    for world in worlds:
        report.add(check(world.reads, world.writes, world.pending, others=len(world.others)))
        hangs += world.hangs
        errors += world.errors
        calls += [(r.end - r.start, f"{r.via}({r.key!r}) by {r.actor}") for r in world.reads]
        calls += [(w.end - w.committed, f"{w.via}({w.key!r}) by {w.actor}") for w in world.writes]
        calls += [(o.end - o.start, f"{o.what} by {o.actor}") for o in world.others]
    calls.sort(reverse=True)
    return Outcome(
        config=config.name,
        seconds=seconds,
        worlds=len(worlds),
        operations=report.operations,
        reads=report.reads,
        writes=report.writes,
        violations=len(report.violations),
        held=report.held,
        exempted=report.exempted,
        examples=[str(v) for v in report.violations[:EXAMPLES]],
        hangs=hangs,
        errors=errors,
        slowest=[f"{seconds:.3f} s: {what}" for seconds, what in calls[:3]],
        elapsed=elapsed,
    )


# -- the caller's side ---------------------------------------------------------------------


def _wait_ready(path: str, alive: Callable[[], bool]) -> float | None:
    """The run's start, as the worker wrote it; None if the worker ended first."""
    while alive():
        with contextlib.suppress(FileNotFoundError, ValueError):
            return float(Path(path).read_text())
        time.sleep(0.005)
    return None


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - now()))


#: Modules every worker needs, imported once by the fork server.
PRELOAD = ["tests.history.runner", "redis", "redis.asyncio", "sqlite3", "aiosqlite"]

_context: Any = None


def _worker_context() -> Any:
    """A ``forkserver`` context: one process that imported everything once, and
    forks a fresh, single-threaded worker per configuration (a spawned interpreter
    would spend a third of a second on imports, per configuration)."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context = context
    return _context


def run_isolated(
    config: Config,
    *,
    seconds: float | None = None,
    seed: int = 0,
    deadline: float = 5.0,
    url: str | None = None,
    fault: Fault | None = None,
) -> Outcome:
    """Run ``config`` for ``seconds`` (default: its short-run length) in a worker
    process against ``url``, injecting ``fault``; the outcome, never a hang."""
    seconds = config.seconds if seconds is None else seconds
    started = now()
    with tempfile.TemporaryDirectory(prefix="cachewise-history-") as tmpdir:
        env = Env(url, tmpdir, deadline, seed, seconds, os.path.join(tmpdir, "ready"))
        out = os.path.join(tmpdir, "outcome.json")
        log_path = os.path.join(tmpdir, "worker.log")
        spec = {"config": config.as_dict(), "env": asdict(env), "out": out, "log": log_path}
        process = _worker_context().Process(
            target=worker, args=(spec,), name=f"history:{config.name}"
        )  # not a daemon: a daemon process may not start the peer of a "procs" run
        process.start()
        injector = None
        if fault is not None:

            def inject() -> None:
                assert env.ready_file is not None
                assert fault is not None
                start = _wait_ready(env.ready_file, process.is_alive)
                if start is not None:
                    fault(start, seconds)

            injector = threading.Thread(target=inject, name="history-fault", daemon=True)
            injector.start()
        process.join(timeout=seconds + 10 * deadline + 60)
        killed = process.is_alive()
        if killed:
            process.kill()
            process.join()
        if injector is not None:
            injector.join(timeout=30)
        try:
            outcome = Outcome(**json.loads(Path(out).read_text()))
        except FileNotFoundError:
            outcome = Outcome(config.name, seconds)
            why = "killed after its hard limit" if killed else f"exit code {process.exitcode}"
            outcome.hangs.append(f"the worker ended without an outcome ({why})")
        log_text = _read_log(log_path)
        if (process.exitcode != 0 or outcome.hangs) and log_text.strip():
            tail = "\n".join(log_text.splitlines()[-200:])
            outcome.hangs.append(f"worker exit code {process.exitcode}; its output:\n{tail}")
    outcome.elapsed = now() - started
    return outcome


def _read_log(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def restart(server: RedisServer) -> Fault:
    """Kill the server 30% into the run and start it again (empty) at 55%."""

    def inject(start: float, seconds: float) -> None:
        _sleep_until(start + 0.3 * seconds)
        server.kill()
        _sleep_until(start + 0.55 * seconds)
        server.restart()

    return inject


def blackhole(proxy: LatencyProxy) -> Fault:
    """Black-hole the proxy 30% into the run, forward again at 60%."""

    def inject(start: float, seconds: float) -> None:
        _sleep_until(start + 0.3 * seconds)
        proxy.blackhole()
        _sleep_until(start + 0.6 * seconds)
        proxy.forward()

    return inject


@contextlib.contextmanager
def fault_target(config: Config, server: RedisServer) -> Iterator[tuple[str, Fault]]:
    """The URL a fault configuration's caches use, and its fault, on a private
    ``server`` (one the caller may kill)."""
    if config.fault == "restart":
        yield server.url, restart(server)
    elif config.fault == "blackhole":
        from tests.support.faults import LatencyProxy

        with LatencyProxy(server.port) as proxy:
            yield proxy.url, blackhole(proxy)
    else:
        raise ValueError(f"{config.name} injects no fault")


# -- the worker's side ---------------------------------------------------------------------


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as out:
        json.dump(data, out)
    os.replace(path + ".tmp", path)


def worker(spec: dict[str, Any]) -> None:
    """The worker process: run one configuration, write its outcome, and end at
    once (``os._exit``): a cache thread that hangs must not keep it alive."""
    # Everything this process prints (faulthandler's dumps included) goes to its log.
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    config = Config(**spec["config"])
    env = Env(**spec["env"])
    started = now()
    # The last resort if the watchdog thread cannot run: dump every thread and end.
    faulthandler.dump_traceback_later(env.seconds + 8 * env.deadline + 30, exit=True)

    def finish(worlds: list[Recorder], code: int) -> None:
        outcome = outcome_of(config, worlds, env.seconds, now() - started)
        _write_json(spec["out"], asdict(outcome))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def ready() -> None:
        if env.ready_file is not None:
            Path(env.ready_file).write_text(repr(now()))

    try:
        worlds = run_config(config, env, on_start=ready, on_stuck=lambda rec: finish([rec], 0))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(2)
    finish(worlds, 0)
