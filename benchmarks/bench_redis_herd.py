"""A thundering herd across processes on Redis: loads, waiters' latency, commands.

Eight worker processes (``_redis_herd_worker.py``, started with ``subprocess``) each
build their own ``Cache.from_url(url)`` on one private ``redis-server`` and run 20
threads. Before any round they open 20 pooled connections and load every Lua
script they use, then report ready. For a round the parent picks a start time
300 ms ahead and sends it, with a fresh cold key, to every worker; all 160 threads
sleep until that instant (``time.time_ns``, one clock for every process) and call
``get_or_load(key, loader)`` once. The loader sleeps 200 ms and records when it
ran; loads are counted in the processes and summed.

Figures per round:

- loads (target: exactly 1, every round);
- each waiter's extra latency = (when it got the value) - (when the load finished),
  for every caller but the one that ran the loader; p50, p99, max (target: the max
  over every waiter of every round <= 10% of the load time + 10 ms);
- wall = release -> last caller has its value, over the loader's own time; lead =
  release -> the load starts;
- Redis commands: ``CONFIG RESETSTAT`` before the round, the sum of ``calls`` in
  ``INFO commandstats`` after it (the benchmark's own CONFIG/INFO/MONITOR/ECHO left
  out). Commands that Lua scripts run count there under their own names, so a
  ``MONITOR`` connection also splits them into requests (sent by clients) and
  in-script commands. Both are divided by the number of waiting processes (those
  that ran no load), and by the wall time for a rate.

For scale, a floor runs the same herd with no cache at all: one process loads, then
SETs the value and RPUSHes a token per other process (one pipelined round trip);
in every other process one thread BLPOPs a token and GETs the value while the
other threads wait on a ``threading.Event``. Its extra latency is what waking 7
processes through Redis and 159 threads costs on this machine (on a machine with
few cores the wake-ups queue for the CPUs), which cachewise pays too.

The same herd runs against dogpile.cache's ``dogpile.cache.redis`` region with
``distributed_lock=True`` (``thread_local_lock=False``, as dogpile asks),
``get_or_create`` with the same loader: its threads poll redis-py's lock every
``lock_sleep`` (0.1 s) and, once the value exists, still take the lock one at a
time to check it. Scenarios alternate round by round.

Targets (cachewise only), reported as PASS/FAIL and never asserted: exactly one
load in every round, and every waiter's extra latency <= 10% of the load + 10 ms.
"""

from __future__ import annotations

import json
import math
import secrets
import selectors
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _common import table, verdict
from _redis_support import command_calls, start_server

NAME = "redis_herd"

PROCESSES = 8
THREADS = 20
LOAD_SECONDS = 0.2
#: A waiter's extra latency may be at most this (10% of the load + 10 ms).
LATENCY_LIMIT_S = 0.1 * LOAD_SECONDS + 0.010
START_MARGIN_S = 0.3
ROUND_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
WORKER = Path(__file__).resolve().parent / "_redis_herd_worker.py"

CACHEWISE = "cachewise Cache.get_or_load"
DOGPILE = "dogpile.cache.redis get_or_create, distributed_lock"
FLOOR = "floor: no cache, BLPOP wake-up + Event"


# -- workers ------------------------------------------------------------------------


class _Workers:
    """The worker processes; each one is only ever signalled through its Popen."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ready: list[dict[str, Any]] = []

    def start(self, url: str) -> None:
        """Spawn the workers and wait until each has warmed up."""
        for _ in range(PROCESSES):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), url, str(THREADS), str(LOAD_SECONDS)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        self.ready = [_read_json(proc, deadline) for proc in self.procs]

    @property
    def dogpile_error(self) -> str | None:
        errors = [r["dogpile_error"] for r in self.ready if r.get("dogpile_error")]
        return errors[0] if errors else None

    def herd(self, lib: str, key: str, start_ns: int, loader: int) -> list[dict[str, Any]]:
        """One round; in the floor scenario worker number ``loader`` runs the load."""
        for number, proc in enumerate(self.procs):
            command = {
                "op": "herd",
                "lib": lib,
                "key": key,
                "start_ns": start_ns,
                "loader": number == loader,
                "others": len(self.procs) - 1,
            }
            stdin = _pipe(proc.stdin)
            stdin.write(json.dumps(command).encode() + b"\n")
            stdin.flush()
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        return [_read_json(proc, deadline) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.poll() is None:
                    stdin = _pipe(proc.stdin)
                    stdin.write(b'{"op": "quit"}\n')
                    stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise RuntimeError("worker pipe missing")
    return stream


def _read_json(proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    """One JSON line from a worker, or an error if it dies or takes too long."""
    stdout = _pipe(proc.stdout)
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(remaining):
            raise RuntimeError(f"worker {proc.pid} did not answer in time")
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"worker {proc.pid} exited (code {proc.wait()}) without answering")
    reply: dict[str, Any] = json.loads(line)
    return reply


# -- counting commands ----------------------------------------------------------------


class _CommandLog:
    """A MONITOR connection, counting what clients send and what scripts run, until
    it sees its own sentinel ``ECHO``."""

    def __init__(self, server: Any) -> None:
        self.sentinel = "herd-done-" + secrets.token_hex(6)
        self.requests: Counter[str] = Counter()
        self.in_script: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._client = server.client()
        self._monitor = self._client.monitor()  # connects now, before any RESETSTAT
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._monitor.listen():
                command = str(event["command"])
                name = command.split(" ", 1)[0].lower()
                if name == "echo" and self.sentinel in command:
                    return
                if event["client_type"] == "lua":
                    self.in_script[name] += 1
                else:
                    self.requests[name] += 1
        except BaseException as exc:
            self.error = exc

    def stop(self, client: Any) -> None:
        client.echo(self.sentinel)
        self._thread.join(timeout=10)
        self._monitor.__exit__(None, None, None)
        self._client.close()
        if self._thread.is_alive() or self.error is not None:
            raise RuntimeError(f"MONITOR did not see the end of the round: {self.error!r}")


# -- one round ------------------------------------------------------------------------


@dataclass
class _Round:
    loads: int
    loading_processes: int
    loader_s: float
    wall_s: float
    lead_s: float
    release_skew_s: float
    extra_s: list[float]
    first_s: list[float]
    wrong: int
    commands: dict[str, int]
    requests: dict[str, int]
    in_script: dict[str, int]

    @property
    def waiting_processes(self) -> int:
        return PROCESSES - self.loading_processes

    @property
    def ratio(self) -> float:
        return self.wall_s / self.loader_s if self.loader_s else math.inf

    def extra(self, q: float) -> float:
        """A quantile of the waiters' extra latency (q=1: the max)."""
        return _quantile(self.extra_s, q)

    def per_waiting(self, counts: dict[str, int]) -> float:
        return sum(counts.values()) / max(self.waiting_processes, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "loads": self.loads,
            "loading_processes": self.loading_processes,
            "waiting_processes": self.waiting_processes,
            "loader_ms": round(self.loader_s * 1e3, 2),
            "wall_ms": round(self.wall_s * 1e3, 2),
            "wall_over_load": round(self.ratio, 3),
            "lead_ms": round(self.lead_s * 1e3, 2),
            "release_skew_ms": round(self.release_skew_s * 1e3, 2),
            "waiters": len(self.extra_s),
            "extra_ms": {
                "p50": round(self.extra(0.5) * 1e3, 2),
                "p99": round(self.extra(0.99) * 1e3, 2),
                "max": round(self.extra(1.0) * 1e3, 2),
            },
            "first_per_waiting_process_ms": {
                "p50": round(_quantile(self.first_s, 0.5) * 1e3, 2),
                "max": round(_quantile(self.first_s, 1.0) * 1e3, 2),
            },
            "wrong_results": self.wrong,
            "commands": {
                "total": sum(self.commands.values()),
                "per_waiting_process": round(self.per_waiting(self.commands), 2),
                "per_waiting_process_per_s": round(
                    self.per_waiting(self.commands) / self.wall_s, 2
                ),
                "by_command": self.commands,
            },
            "requests": {
                "total": sum(self.requests.values()),
                "per_waiting_process": round(self.per_waiting(self.requests), 2),
                "per_waiting_process_per_s": round(
                    self.per_waiting(self.requests) / self.wall_s, 2
                ),
                "by_command": self.requests,
            },
            "in_script_commands": self.in_script,
        }


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; ``q=1`` is the max."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _round(workers: _Workers, server: Any, admin: Any, lib: str, index: int) -> _Round:
    key = f"herd:{lib}:{index}:{secrets.token_hex(4)}"
    log = _CommandLog(server)
    admin.config_resetstat()
    log.start()
    start_ns = time.time_ns() + int(START_MARGIN_S * 1e9)
    try:
        replies = workers.herd(lib, key, start_ns, index % PROCESSES)
    finally:
        log.stop(admin)
    commands = command_calls(admin.info("commandstats"))

    spans = [(int(s), int(e)) for reply in replies for s, e in reply["loads"]]
    calls = [call for reply in replies for call in reply["calls"]]
    loading = sum(1 for reply in replies if reply["loads"])
    load_end = min((e for _, e in spans), default=start_ns)
    owners = {reply["pid"] for reply in replies if reply["loads"]}
    wrong = sum(1 for call in calls if call["error"] is not None or call["owner"] not in owners)
    extra = [(call["done"] - load_end) / 1e9 for call in calls if not call["loaded"]]
    # When each process that ran no load first had the value (its first thread).
    first = [
        (min(call["done"] for call in reply["calls"]) - load_end) / 1e9
        for reply in replies
        if not reply["loads"] and reply["calls"]
    ]
    return _Round(
        loads=len(spans),
        loading_processes=loading,
        loader_s=statistics.fmean(e - s for s, e in spans) / 1e9 if spans else 0.0,
        wall_s=(max(call["done"] for call in calls) - start_ns) / 1e9,
        lead_s=(min(s for s, _ in spans) - start_ns) / 1e9 if spans else math.nan,
        release_skew_s=(max(call["released"] for call in calls) - start_ns) / 1e9,
        extra_s=extra,
        first_s=first,
        wrong=wrong,
        commands=commands,
        requests=dict(log.requests.most_common()),
        in_script=dict(log.in_script.most_common()),
    )


# -- report -----------------------------------------------------------------------------


@dataclass
class _Scenario:
    label: str
    lib: str
    rounds: list[_Round] = field(default_factory=list)

    def median(self, fn: Any) -> float:
        return float(statistics.median(fn(r) for r in self.rounds))

    def worst(self, fn: Any) -> float:
        return float(max(fn(r) for r in self.rounds))

    def loads_text(self) -> str:
        loads = [r.loads for r in self.rounds]
        return str(loads[0]) if len(set(loads)) == 1 else f"{min(loads)}..{max(loads)}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _timing_row(s: _Scenario) -> list[str]:
    return [
        s.label,
        str(len(s.rounds)),
        s.loads_text(),
        _ms(s.median(lambda r: r.loader_s)),
        _ms(s.median(lambda r: r.lead_s)),
        _ms(s.median(lambda r: r.wall_s)),
        f"{s.median(lambda r: r.ratio):.2f}",
        _ms(s.median(lambda r: r.extra(0.5))),
        _ms(s.median(lambda r: r.extra(0.99))),
        _ms(s.worst(lambda r: r.extra(1.0))),
        _ms(s.median(lambda r: _quantile(r.first_s, 0.5))),
        _ms(s.worst(lambda r: _quantile(r.first_s, 1.0))),
        _ms(s.worst(lambda r: r.release_skew_s)),
        str(sum(r.wrong for r in s.rounds)),
    ]


def _commands_row(s: _Scenario) -> list[str]:
    return [
        s.label,
        f"{s.median(lambda r: r.waiting_processes):.0f}",
        f"{s.median(lambda r: sum(r.commands.values())):,.0f}",
        f"{s.median(lambda r: r.per_waiting(r.commands)):,.1f}",
        f"{s.median(lambda r: r.per_waiting(r.commands) / r.wall_s):,.1f}",
        f"{s.median(lambda r: sum(r.requests.values())):,.0f}",
        f"{s.median(lambda r: r.per_waiting(r.requests)):,.1f}",
        f"{s.median(lambda r: r.per_waiting(r.requests) / r.wall_s):,.1f}",
    ]


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def _targets(s: _Scenario, floor: _Scenario | None) -> list[dict[str, Any]]:
    loads = [r.loads for r in s.rounds]
    loads_ok = all(n == 1 for n in loads) and all(r.wrong == 0 for r in s.rounds)
    loads_summary = (
        f"{s.label}: {PROCESSES}x{THREADS} herd, loads per round {loads} (target exactly 1)"
        f", wrong results {sum(r.wrong for r in s.rounds)}"
    )
    worst = s.worst(lambda r: r.extra(1.0))
    p99 = s.median(lambda r: r.extra(0.99))
    latency_ok = worst <= LATENCY_LIMIT_S
    latency_summary = (
        f"{s.label}: waiter extra latency max {_ms(worst)} ms over all rounds "
        f"(p99 {_ms(p99)} ms; target <= {_ms(LATENCY_LIMIT_S)} ms = 10% of load + 10 ms)"
    )
    if floor is not None and floor.rounds:
        latency_summary += (
            f"; the no-cache floor: max {_ms(floor.worst(lambda r: r.extra(1.0)))} ms, "
            f"p99 {_ms(floor.median(lambda r: r.extra(0.99)))} ms"
        )
    for summary, ok in ((loads_summary, loads_ok), (latency_summary, latency_ok)):
        print(f"  {summary}  {verdict(ok)}")
    return [
        {"subject": s.label, "loads": loads, "passed": loads_ok, "summary": loads_summary},
        {
            "subject": s.label,
            "max_extra_ms": round(worst * 1e3, 2),
            "p99_extra_ms": round(p99 * 1e3, 2),
            "limit_ms": round(LATENCY_LIMIT_S * 1e3, 2),
            "passed": latency_ok,
            "summary": latency_summary,
        },
    ]


def _skipped_result(reason: str) -> dict[str, Any]:
    print(f"skipped: {reason}")
    return {
        "skipped": reason,
        "targets": [
            {"subject": CACHEWISE, "passed": None, "summary": f"{CACHEWISE}: skipped ({reason})"}
        ],
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the cross-process herds; print the tables and the target checks."""
    cachewise_rounds, dogpile_rounds = (1, 1) if quick else (7, 3)
    server, reason = start_server()
    if server is None:
        return _skipped_result(reason or "no Redis server")
    try:
        return _run(server, cachewise_rounds, dogpile_rounds)
    finally:
        server.stop()


def _run(server: Any, cachewise_rounds: int, dogpile_rounds: int) -> dict[str, Any]:
    # One connection, opened now: the bookkeeping never opens one mid-round.
    admin: Any = server.client()
    admin.ping()
    scenarios = [_Scenario(CACHEWISE, "cachewise"), _Scenario(FLOOR, "floor")]
    skipped: dict[str, str] = {}
    workers = _Workers()
    try:
        began = time.perf_counter()
        workers.start(server.url)
        startup = time.perf_counter() - began
        if workers.dogpile_error:
            skipped[DOGPILE] = workers.dogpile_error
            dogpile_rounds = 0
        else:
            scenarios.append(_Scenario(DOGPILE, "dogpile"))
        plan = {"cachewise": cachewise_rounds, "floor": cachewise_rounds, "dogpile": dogpile_rounds}
        # Alternate scenarios round by round, so a noisy spell hits them all alike.
        for index in range(max(plan.values())):
            for scenario in scenarios:
                if index < plan[scenario.lib]:
                    scenario.rounds.append(_round(workers, server, admin, scenario.lib, index))
    finally:
        workers.close()
        admin.close()

    print(
        f"{PROCESSES} processes x {THREADS} threads, one cold key per round, loader sleeps "
        f"{LOAD_SECONDS * 1e3:.0f} ms; private redis-server; workers up in {startup:.1f} s "
        "(connections and Lua scripts warmed before any round)."
    )
    print(
        "extra = caller got the value - the load finished (every caller but the loader's); "
        "lead = release -> load starts;\nwall = release -> last caller has its value; "
        "skew = how late the last thread woke after the release;\n1st/proc = extra of the "
        "first thread in each waiting process (the Redis wake-up, before the in-process "
        "one).\nMedians over rounds; 'max' is the worst round."
    )
    timing_headers = [
        "scenario",
        "rounds",
        "loads",
        "loader ms",
        "lead ms",
        "wall ms",
        "wall/load",
        "extra p50",
        "p99",
        "max",
        "1st/proc p50",
        "max",
        "skew",
        "wrong",
    ]
    print(table(timing_headers, [_timing_row(s) for s in scenarios], "<>>>>>>>>>>>>>"))
    print(
        "\nRedis commands per round (medians). 'commands' = INFO commandstats, which counts "
        "the commands Lua\nscripts run too; 'requests' = what clients sent (MONITOR). "
        "Per waiting process = / processes that ran no load."
    )
    command_headers = [
        "scenario",
        "waiting procs",
        "commands",
        "per waiting proc",
        "per proc per s",
        "requests",
        "per waiting proc",
        "per proc per s",
    ]
    print(table(command_headers, [_commands_row(s) for s in scenarios], "<>>>>>>>"))
    for s in scenarios:
        last = s.rounds[-1]
        print(f"\n  {s.label}, last round:")
        print(f"    requests:   {_breakdown(last.requests)}")
        print(f"    in scripts: {_breakdown(last.in_script)}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")

    print("\nsummary (medians over rounds):")
    summary: dict[str, Any] = {}
    for s in scenarios:
        summary[s.label] = {
            "wall_over_load_median": round(s.median(lambda r: r.ratio), 3),
            "rounds": [r.as_dict() for r in s.rounds],
        }
        print(
            f"  {s.label}: loads per round {[r.loads for r in s.rounds]}, wall/load "
            f"{s.median(lambda r: r.ratio):.2f}, "
            f"{s.median(lambda r: r.per_waiting(r.commands)):,.1f} commands and "
            f"{s.median(lambda r: r.per_waiting(r.requests)):,.1f} requests per waiting process"
        )
    print("\ntargets:")
    targets = _targets(scenarios[0], scenarios[1])
    return {
        "processes": PROCESSES,
        "threads_per_process": THREADS,
        "load_seconds": LOAD_SECONDS,
        "latency_limit_ms": round(LATENCY_LIMIT_S * 1e3, 2),
        "worker_startup_s": round(startup, 2),
        "scenarios": summary,
        "skipped": skipped,
        "targets": targets,
    }
