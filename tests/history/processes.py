"""Runs that span processes: a forked child that carries on its parent's world, and
a spawned peer with a cache of its own; and ``run_config``, one whole run.

A child sends its history back as a pickled file; the parent waits for it up to well
past the run's end, and a child that hangs is asked for its stacks (``SIGUSR1``, a
``faulthandler`` dump that works however wedged the child is), then killed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.history.configs import Config
from tests.history.recorder import Recorder, Watchdog, now
from tests.history.stores import MemoryStore, RedisStore, SqliteStore, Store
from tests.history.workloads import COLD, KEYS, PEER_ACTORS, Env, World, run_world

__all__ = ["peer_main", "run_config"]


def _write_state(path: str, recorder: Recorder) -> None:
    with open(path + ".tmp", "wb") as out:
        pickle.dump(recorder.state(), out)
    os.replace(path + ".tmp", path)


def _read_state(path: str) -> Recorder | None:
    try:
        with open(path, "rb") as src:
            return Recorder.from_state(pickle.load(src))
    except FileNotFoundError:
        return None


def _wait_child(
    world: World, what: str, pid: int, alive: Callable[[], bool], kill: Callable[[], None]
) -> None:
    """Wait for a child process up to well past its end. One that hangs is asked for
    its stacks (``SIGUSR1``, see ``_dump_stacks_on_signal``), then killed (and
    reaped)."""
    limit = max(world.end_at, now()) + 3 * world.env.deadline + 2
    while alive():
        if now() > limit:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)
            stacks = _read_text(_stacks_path(world.env, pid)) or "(no stacks)"
            kill()
            late = limit - world.end_at
            world.recorder.hangs.append(
                f"{what} did not finish {late:.0f} s after its end: killed. Its stacks:\n{stacks}"
            )
            return
        time.sleep(0.02)


def _stacks_path(env: Env, pid: int) -> str:
    return os.path.join(env.tmpdir, f"stacks-{pid}.txt")


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as src:
            return src.read()
    except FileNotFoundError:
        return ""


#: Open files that faulthandler writes to (they must stay open).
_STACK_FILES: list[Any] = []


def _dump_stacks_on_signal(env: Env) -> None:
    """In a child process: dump every thread's stack to a file on ``SIGUSR1``. This
    runs in C, in the signal handler, so it works however wedged the child is.
    (Not ``dump_traceback_later`` in a forked child: its timer thread is not
    forked, and re-arming it waits for that thread forever.)"""
    stacks = open(_stacks_path(env, os.getpid()), "w")  # noqa: SIM115 - kept open on purpose
    _STACK_FILES.append(stacks)
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)


def _fork_when_warm(world: World) -> None:
    """Fork while the actor threads use the cache, once a background refresh ran
    (or 40% into the run): the child then continues the world on its copy."""
    cache = world.sync_cache
    assert cache is not None
    start = now()
    warm_by = start + 0.4 * world.seconds
    while now() < warm_by:
        stats = cache.stats()
        if stats.early_refreshes + stats.stale_served > 0:
            break
        time.sleep(0.002)
    stats = cache.stats()
    refreshes = stats.early_refreshes + stats.stale_served
    world.recorder.other(f"fork (after {refreshes} background refreshes)", start)
    out = os.path.join(world.env.tmpdir, f"forked-{os.getpid()}-{now():.6f}.pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:
        _forked_child(world, out)  # never returns
    status: list[int] = []

    def alive() -> bool:
        if not status:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(code)
        return not status

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        status.append(os.waitpid(pid, 0)[1])

    def join() -> None:
        _wait_child(world, f"forked child {pid}", pid, alive, kill)
        child = _read_state(out)
        if child is None:
            world.recorder.hangs.append(f"forked child {pid} left no history (status {status})")
        elif world.memory is not None:
            world.worlds.append(child)  # its own copy of memory: a world of its own
        else:
            world.recorder.extend(child)

    world.children.append(join)


def _forked_child(parent: World, out: str) -> None:
    """The forked child: carry on the parent's world (on the inherited cache) with
    threads of its own, then report. Never returns."""
    code = 3
    recorder = Recorder()
    try:
        _dump_stacks_on_signal(parent.env)
        if parent.memory is not None:
            # Its memory is a copy: its world's past is what the parent had finished.
            recorder.reads += parent.recorder.reads
            recorder.writes += parent.recorder.writes
            recorder.others += parent.recorder.others
            recorder.pending += parent.recorder.pending

        def stuck() -> None:
            _write_state(out, recorder)
            os._exit(3)

        watchdog = Watchdog(recorder, parent.env.deadline, on_stuck=stuck).start()
        parent.store.after_fork()
        world = parent.forked(recorder, watchdog)
        run_world(world)
        watchdog.stop()
        code = 0
    except BaseException as exc:
        recorder.error("the forked child", exc)
    finally:
        _write_state(out, recorder)
        os._exit(code)


def _spawn_peer(world: World) -> None:
    """Start the second process (spawned: a fresh interpreter with its own cache on
    the same Redis and store) and wait until it runs."""
    context = multiprocessing.get_context("spawn")
    out = os.path.join(world.env.tmpdir, "peer.pickle")
    ready = os.path.join(world.env.tmpdir, "peer.ready")
    env = asdict(world.env) | {"ready_file": ready}
    process = context.Process(
        target=peer_main, args=(world.config.as_dict(), env, out), name="history-peer"
    )
    process.start()
    limit = now() + 30
    while not os.path.exists(ready) and process.is_alive() and now() < limit:
        time.sleep(0.005)
    if not os.path.exists(ready):
        world.watchdog.trip(f"the peer process did not start ({process.exitcode})")

    def join() -> None:
        assert process.pid is not None
        _wait_child(world, f"peer {process.pid}", process.pid, process.is_alive, process.kill)
        process.join()
        peer = _read_state(out)
        if peer is None:
            world.recorder.hangs.append(f"peer {process.pid} left no history ({process.exitcode})")
        else:
            world.recorder.extend(peer)

    world.children.append(join)


def peer_main(config: dict[str, Any], env: dict[str, Any], out: str) -> None:
    """The spawned peer's entry point: async tasks on an AsyncCache of its own."""
    recorder = Recorder()
    code = 3
    settings = Env(**env)
    assert settings.ready_file is not None
    try:
        _dump_stacks_on_signal(settings)

        def stuck() -> None:
            _write_state(out, recorder)
            os._exit(3)

        watchdog = Watchdog(recorder, settings.deadline, on_stuck=stuck).start()
        store = SqliteStore(settings.db_path)  # the main process created it
        world = World(
            Config(**config), settings, store, recorder, watchdog, label="peer", actors=PEER_ACTORS
        )
        run_world(world, on_start=lambda: _touch(settings.ready_file))
        watchdog.stop()
        store.close()
        code = 0
    except BaseException as exc:
        recorder.error("the peer process", exc)
    finally:
        _touch(settings.ready_file)
        _write_state(out, recorder)
        os._exit(code)  # a cache thread that hangs must not keep the peer alive


def _touch(path: str | None) -> None:
    if path is not None:
        with open(path, "a"):
            pass


# -- a whole run -----------------------------------------------------------------------------


@contextlib.contextmanager
def _store(config: Config, env: Env) -> Iterator[Store]:
    store: Store
    if config.frontend == "fork" and env.url is not None and config.shared_store:
        store = RedisStore(_store_url(env.url), KEYS + COLD, create=True)
    elif config.shared_store:
        store = SqliteStore(env.db_path, KEYS + COLD, create=True)
    else:
        store = MemoryStore(KEYS + COLD)
    try:
        yield store
    finally:
        store.close()


def _store_url(url: str) -> str:
    """Database 15 of the run's Redis server: apart from the caches' database."""
    parts = urlsplit(url)
    return urlunsplit(("redis", parts.netloc, "/15", "", ""))


def run_config(
    config: Config,
    env: Env,
    *,
    on_start: Callable[[], None] | None = None,
    on_stuck: Callable[[Recorder], None] | None = None,
) -> list[Recorder]:
    """Run ``config`` in this process (and its children); the recorded worlds.

    Usually one world; a forked child of an in-memory run is a second one (its
    memory is a copy, so its history is checked on its own). ``on_stuck`` is called
    with the history so far if the run itself hangs past the watchdog's grace.
    """
    recorder = Recorder()
    watchdog = Watchdog(
        recorder,
        env.deadline,
        on_stuck=None if on_stuck is None else (lambda: on_stuck(recorder)),
    ).start()
    with _store(config, env) as store:
        world = World(config, env, store, recorder, watchdog)

        def start() -> None:
            if on_start is not None:
                on_start()
            if config.frontend == "fork":
                _fork_when_warm(world)

        try:
            before = (lambda: _spawn_peer(world)) if config.frontend == "procs" else None
            run_world(world, before=before, on_start=start)
        finally:
            watchdog.stop()
    return [recorder, *world.worlds]
