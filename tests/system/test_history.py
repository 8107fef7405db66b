"""The history checker (issue 9, section 3): the short, seeded run in ``make test``.

Every configuration of ``tests/history/configs.py`` (memory, Redis, Redis Cluster;
``Cache``, ``AsyncCache``, both on one store, two processes, a forked child; keys,
tags, versions, after-commit; stale-while-revalidate, early refresh, ``set`` and
``clear`` mixed in; a Redis restart, a black hole, cancelled waiters) runs for a
fraction of a second in a worker process of its own, recording every operation. The
checker then applies one rule: no read that started after a write's invalidation
returned may return a version older than that write. Every call has a deadline;
a call that overruns is a failure, reported with every thread's and task's stack.

The long run: ``python -m tests.history --seconds N [--seed S] [--only CONFIG]``.
Set ``CACHEWISE_HISTORY_SEED`` to run the short one on other seeds.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.history.checker import check
from tests.history.configs import CONFIGS, Config
from tests.history.processes import run_config
from tests.history.recorder import Pending, Read, Recorder, Watchdog, Write
from tests.history.runner import Outcome, fault_target, outcome_of, run_isolated
from tests.history.workloads import Env

# ======================================================================================
# KNOWN FAILURES: configurations that fail on the current code, and the break behind
# each. Remove an entry as its fix lands; the xfail is strict, so a configuration
# that starts to pass fails the suite until its entry goes. Each known failure gets
# up to KNOWN_ATTEMPTS seeded runs to show itself, so a strict xfail does not flake
# on a rare race. An entry reads, for example:
#     "redis-procs-tags": "break 3: a call after another process's invalidate_tags "
#                         "returned joins an in-process load that read the old data",
# ======================================================================================
KNOWN_FAILURES: dict[str, str] = {}
KNOWN_ATTEMPTS = 3

SEED = int(os.environ.get("CACHEWISE_HISTORY_SEED", "0"))
#: The per-call deadline. Caches here wait for another process's lease 2 s at most
#: (``wait_timeout``), and a Redis call fails in 0.25 s: 5 s is a hang.
DEADLINE = 5.0

pytestmark = pytest.mark.slow


# -- the summary at the end of the session --------------------------------------------------


class _Summary:
    """A plugin registered on first use: one line per configuration run, at the end."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.outcomes:
            return
        terminalreporter.section("history checker")
        for outcome in self.outcomes:
            terminalreporter.write_line(outcome.summary())
        terminalreporter.write_line(
            f"{len(self.outcomes)} runs: {sum(o.operations for o in self.outcomes)} operations "
            f"({sum(o.reads for o in self.outcomes)} reads, "
            f"{sum(o.writes for o in self.outcomes)} writes), "
            f"{sum(o.violations for o in self.outcomes)} violations, "
            f"{sum(len(o.hangs) for o in self.outcomes)} hangs"
        )


@pytest.fixture(scope="module")
def history_summary(pytestconfig: pytest.Config) -> list[Outcome]:
    plugin = pytestconfig.pluginmanager.get_plugin("cachewise-history")
    if plugin is None:
        plugin = _Summary()
        pytestconfig.pluginmanager.register(plugin, "cachewise-history")
    assert isinstance(plugin, _Summary)
    return plugin.outcomes


# -- every configuration ------------------------------------------------------------------------


def _param(config: Config) -> object:
    marks = []
    if config.name in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[config.name]))
    return pytest.param(config, id=config.name, marks=marks)


def _run(config: Config, request: pytest.FixtureRequest, seed: int, fresh: bool) -> Outcome:
    """One short run of ``config``, on the Redis fixtures it needs; ``fresh``: the
    fixture's server was just emptied (a second attempt empties it itself)."""
    if config.fault is not None:
        server = request.getfixturevalue("fresh_redis_server")
        if not fresh:
            server.flushall()
        with fault_target(config, server) as (proxied, fault):
            return run_isolated(config, seed=seed, deadline=DEADLINE, url=proxied, fault=fault)
    url: str | None = None
    if config.backend == "redis":
        url = request.getfixturevalue("redis_url")
        if not fresh:
            request.getfixturevalue("redis_server").flushall()
    elif config.backend == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        if not fresh:
            request.getfixturevalue("redis_cluster").flushall()
    return run_isolated(config, seed=seed, deadline=DEADLINE, url=url)


@pytest.mark.parametrize("config", [_param(config) for config in CONFIGS])
def test_no_read_sees_a_version_older_than_a_finished_write_and_no_call_hangs(
    config: Config, request: pytest.FixtureRequest, history_summary: list[Outcome]
) -> None:
    attempts = KNOWN_ATTEMPTS if config.name in KNOWN_FAILURES else 1
    for attempt in range(attempts):
        outcome = _run(config, request, SEED + attempt, fresh=attempt == 0)
        history_summary.append(outcome)
        if not outcome.ok:
            break
    assert outcome.reads > 0, outcome.describe()
    assert outcome.ok, outcome.describe()


def test_every_known_failure_names_a_configuration() -> None:
    names = {config.name for config in CONFIGS}
    assert set(KNOWN_FAILURES) <= names, set(KNOWN_FAILURES) - names
    assert len(names) == len(CONFIGS), "two configurations share a name"


# -- the checker ------------------------------------------------------------------------------


def _read(key: str, version: int, start: float, end: float | None = None, proc: int = 1) -> Read:
    return Read(key, version, start, start + 0.01 if end is None else end, "get", "r", proc)


def _write(
    key: str, version: int, end: float, *, proc: int = 1, held: bool = False, start: float = 0.0
) -> Write:
    return Write(key, version, start, start, end, "delete", "w", proc, held)


def test_a_read_that_starts_after_the_invalidation_returned_must_see_the_write() -> None:
    write = _write("k", 2, end=1.1, start=1.0)
    report = check([_read("k", 1, 1.2), _read("k", 2, 1.3)], [write])
    assert [(v.read.version, v.write) for v in report.violations] == [(1, write)]
    assert (report.reads, report.writes, report.operations) == (2, 1, 3)


def test_a_read_that_overlaps_the_invalidation_may_see_either_version() -> None:
    write = _write("k", 2, end=1.1, start=1.0)
    reads = [_read("k", 1, 0.5, 2.0), _read("k", 1, 1.05), _read("k", 1, 1.1)]
    assert check(reads, [write]).violations == []


def test_the_newest_write_that_bound_the_read_is_the_one_reported() -> None:
    # Invalidations may end out of version order; the newest version bound counts.
    writes = [_write("k", 3, end=1.1), _write("k", 2, end=1.2), _write("k", 4, end=2.0)]
    (violation,) = check([_read("k", 2, 1.5)], writes).violations
    assert violation.write.version == 3
    assert "returned version 2; but version 3" in str(violation)


def test_keys_are_checked_separately() -> None:
    assert check([_read("a", 1, 1.5)], [_write("b", 5, end=1.0)]).violations == []


def test_a_held_invalidation_binds_its_own_process_at_once() -> None:
    report = check([_read("k", 1, 1.5, proc=1)], [_write("k", 2, end=1.0, proc=1, held=True)])
    assert len(report.violations) == 1


def test_a_held_invalidation_binds_other_processes_once_it_settled() -> None:
    write = _write("k", 2, end=1.0, proc=1, held=True)
    samples = [Pending(1, 1.2, 3), Pending(1, 1.5, 0), Pending(2, 1.1, 0)]
    before, after = _read("k", 1, 1.4, proc=2), _read("k", 1, 1.6, proc=2)
    report = check([before, after], [write], samples)
    assert [v.read for v in report.violations] == [after]
    assert report.exempted == 1


def test_a_held_invalidation_that_never_settled_binds_no_other_process() -> None:
    write = _write("k", 2, end=1.0, proc=1, held=True)
    report = check([_read("k", 1, 9.0, proc=2)], [write], [Pending(1, 2.0, 1)])
    assert report.violations == []
    assert report.exempted == 1


def _reference(reads: list[Read], writes: list[Write]) -> set[Read]:
    """The rule, read literally: O(reads x writes)."""
    return {
        r
        for r in reads
        for w in writes
        if w.key == r.key and w.end < r.start and r.version < w.version
    }


def test_the_checker_agrees_with_the_rule_read_literally_on_random_histories() -> None:
    rng = random.Random(7)
    for _ in range(200):
        keys = ["a", "b", "c"][: rng.randint(1, 3)]
        writes = []
        for key in keys:
            moment = 0.0
            for version in range(1, rng.randint(1, 8)):
                moment += rng.random()
                writes.append(_write(key, version, end=moment + rng.random(), start=moment))
        reads = [_read(rng.choice(keys), rng.randint(0, 8), rng.random() * 8) for _ in range(30)]
        found = {v.read for v in check(reads, writes).violations}
        assert found == _reference(reads, writes)


# -- the harness catches what it must --------------------------------------------------------


def _in_process(config: Config, tmp_path: Path, deadline: float = DEADLINE) -> Outcome:
    env = Env(None, str(tmp_path), deadline, SEED, config.seconds)
    started = time.monotonic()
    worlds = run_config(config, env)
    return outcome_of(config, worlds, config.seconds, time.monotonic() - started)


@pytest.mark.parametrize("frontend", ["sync", "async"])
@pytest.mark.parametrize("broken", ["no-invalidate", "invalidate-first"])
def test_a_cache_used_wrongly_shows_violations(frontend: str, broken: str, tmp_path: Path) -> None:
    """The checker is only as good as what it can catch: a write that never
    invalidates, or invalidates before it commits, must show up as violations."""
    outcome = _in_process(Config("memory", frontend, broken=broken, seconds=0.4), tmp_path)
    assert outcome.violations > 0, outcome.describe()
    assert not outcome.hangs, outcome.describe()
    assert "but version" in outcome.examples[0]


def test_a_hung_call_ends_the_run_with_every_stack(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = _in_process(Config("memory", "sync", broken="hang", seconds=0.3), tmp_path, 0.3)
    assert time.monotonic() - started < 5, "the run waited for the hung call"
    (hang,) = outcome.hangs[:1]
    assert "overran its 0.3 s deadline" in hang
    assert "--- thread main-sync-0" in hang
    assert "in load" in hang  # the hung loader's own frame


def test_a_hung_task_is_reported_with_its_stack_by_a_worker_process() -> None:
    config = Config("memory", "async", broken="hang", seconds=0.3)
    outcome = run_isolated(config, deadline=0.5)
    assert outcome.hangs, outcome.describe()
    assert "--- task main-task-" in outcome.hangs[0]
    assert "in aload" in outcome.hangs[0]
    assert outcome.elapsed < 10


def test_the_watchdog_gives_up_on_a_run_that_does_not_stop() -> None:
    """When even the run's own thread hangs, ``on_stuck`` ends it (a worker process
    reports what it has and exits) rather than wait forever."""
    recorder, stuck, never = Recorder(), threading.Event(), threading.Event()
    watchdog = Watchdog(recorder, 0.1, poll=0.01, grace=0.1, on_stuck=stuck.set).start()

    def hang() -> None:
        with watchdog.call("a call that never returns"):
            never.wait(5)

    thread = threading.Thread(target=hang, name="hanging", daemon=True)
    thread.start()
    try:
        assert stuck.wait(5)
        assert "a call that never returns by hanging overran" in recorder.hangs[0]
    finally:
        never.set()
        thread.join()
        watchdog.stop()


def test_a_dump_shows_the_tasks_of_a_watched_loop() -> None:
    recorder = Recorder()
    watchdog = Watchdog(recorder, 60)
    loop = asyncio.new_event_loop()
    started, release = threading.Event(), threading.Event()

    async def sleeper() -> None:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    def run() -> None:
        loop.run_until_complete(loop.create_task(sleeper(), name="the-sleeper"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    watchdog.watch_loop(loop)
    try:
        assert started.wait(5)
        watchdog.trip("for the test")
        assert "--- task the-sleeper" in recorder.hangs[0]
        assert "in sleeper" in recorder.hangs[0]
    finally:
        release.set()
        thread.join()
        loop.close()
