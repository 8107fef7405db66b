"""One process of ``bench_redis_herd``'s cross-process herd (not a benchmark itself).

    python benchmarks/_redis_herd_worker.py URL THREADS LOAD_SECONDS

Builds its own ``Cache.from_url(URL)`` and a dogpile.cache ``dogpile.cache.redis``
region with ``distributed_lock=True``, opens THREADS connections in each client's
pool and loads every Lua script both use (so the herd measures neither connecting
nor script loading), then prints ``{"ready": ...}``. After that it reads one JSON
command per line on stdin:

- ``{"op": "herd", "lib": "cachewise" | "dogpile", "key": K, "start_ns": T}``:
  THREADS threads sleep until ``time.time_ns()`` reaches T, then each calls
  ``get_or_load(K, loader)`` (``get_or_create`` for dogpile) once. The loader sleeps
  LOAD_SECONDS and records when it ran; it returns ``{"pid": ..., "key": K}``.
  Replies with one JSON line: the loads this process ran (start and end, ns) and,
  per thread, when it was released, when it got its value, whose value it was and
  whether it ran the loader itself.
  ``"lib": "floor"`` runs the least a cross-process single-flight can do instead
  (no cache): in each process the first thread leads and the others wait on a
  ``threading.Event``; the leader of the process told ``"loader": true`` runs the
  loader, then SETs the value and RPUSHes one token per other process (one
  pipelined round trip); every other leader BLPOPs a token, then GETs the value.
  It costs what cachewise's waiters also pay after the load: one wake-up through
  Redis, one read, and the in-process fan-out to the threads.
- ``{"op": "quit"}``: close everything and exit.

Times are ``time.time_ns()``: one clock for every process on the machine.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import cachewise  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import redis

from cachewise import Cache

DOGPILE_TTL = 300


def _preconnect(client: Any, count: int) -> None:
    """Open ``count`` connections in ``client``'s pool, then hand them back."""
    pool = client.connection_pool
    connections = [pool.get_connection() for _ in range(count)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        pool.release(connection)


class _Floor:
    """One herd's bare single-flight: a lock and an Event per process, a Redis list
    across processes (see the module docstring)."""

    def __init__(self, client: Any, key: str, designated: bool, others: int) -> None:
        self.client = client
        self.key = key
        self.notify = key + ":notify"
        self.designated = designated
        self.others = others
        self.lock = threading.Lock()
        self.event: threading.Event | None = None
        self.value: Any = None

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        with self.lock:
            event = self.event
            leader = event is None
            if event is None:
                event = self.event = threading.Event()
        if not leader:
            event.wait()
            return self.value
        if self.designated:
            value = loader()
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key, json.dumps(value), ex=600)
            pipe.rpush(self.notify, *["1"] * self.others)
            pipe.expire(self.notify, 600)
            pipe.execute()
        else:
            self.client.blpop([self.notify], timeout=30)
            value = json.loads(self.client.get(self.key))
        self.value = value
        event.set()
        return value


class _Worker:
    def __init__(self, url: str, threads: int, load_seconds: float) -> None:
        self.threads = threads
        self.load_seconds = load_seconds
        self.pid = os.getpid()
        self.cache = Cache.from_url(url)
        self.floor_client: Any = redis.Redis.from_url(url)
        self.region: Any = None
        self.dogpile_error: str | None = None
        try:
            from dogpile.cache import make_region
        except ImportError as exc:
            self.dogpile_error = str(exc)
        else:
            self.region = make_region().configure(
                "dogpile.cache.redis",
                expiration_time=DOGPILE_TTL,
                arguments={
                    "url": url,
                    "distributed_lock": True,
                    # dogpile warns unless this is off with a distributed lock.
                    "thread_local_lock": False,
                },
            )

    def warm(self) -> None:
        """Connections and Lua scripts, before anything is counted."""
        warm_key = f"warm:{self.pid}"
        _preconnect(self.cache.backend.client, self.threads)  # type: ignore[attr-defined]
        self.cache.get_or_load(warm_key, lambda: {"pid": self.pid})  # READ + SET_LEASED
        self.cache.get_or_load(warm_key, lambda: {"pid": self.pid})
        self.floor_client.ping()
        if self.region is not None:
            _preconnect(self.region.backend.writer_client, self.threads)
            self.region.get_or_create(warm_key, lambda: {"pid": self.pid})  # lock scripts

    def herd(
        self, lib: str, key: str, start_ns: int, designated: bool, others: int
    ) -> dict[str, Any]:
        loads: list[tuple[int, int]] = []
        calls: list[dict[str, Any]] = []
        guard = threading.Lock()
        value = {"pid": self.pid, "key": key}
        mine = threading.local()  # marks the threads that ran the loader themselves

        def loader() -> dict[str, Any]:
            began = time.time_ns()
            time.sleep(self.load_seconds)
            ended = time.time_ns()
            mine.loaded = True
            with guard:
                loads.append((began, ended))
            return value

        if lib == "cachewise":
            get: Any = self.cache.get_or_load
        elif lib == "dogpile" and self.region is not None:
            get = self.region.get_or_create
        elif lib == "floor":
            get = _Floor(self.floor_client, key, designated, others).get
        else:
            raise ValueError(f"unknown or unavailable library {lib!r}")

        def caller() -> None:
            delay = (start_ns - time.time_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            released = time.time_ns()
            error = None
            try:
                got = get(key, loader)
            except Exception as exc:
                got, error = None, f"{type(exc).__name__}: {exc}"
            done = time.time_ns()
            owner = got.get("pid") if isinstance(got, dict) and got.get("key") == key else None
            with guard:
                calls.append(
                    {
                        "released": released,
                        "done": done,
                        "owner": owner,
                        "loaded": getattr(mine, "loaded", False),
                        "error": error,
                    }
                )

        workers = [threading.Thread(target=caller) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return {"pid": self.pid, "loads": loads, "calls": calls}

    def close(self) -> None:
        self.cache.close()
        self.floor_client.close()
        if self.region is not None:
            self.region.backend.writer_client.close()


def main(argv: list[str]) -> int:
    url, threads, load_seconds = argv[0], int(argv[1]), float(argv[2])
    worker = _Worker(url, threads, load_seconds)
    try:
        worker.warm()
        print(
            json.dumps({"ready": True, "pid": worker.pid, "dogpile_error": worker.dogpile_error}),
            flush=True,
        )
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            reply = worker.herd(
                command["lib"],
                command["key"],
                int(command["start_ns"]),
                bool(command.get("loader", False)),
                int(command.get("others", 0)),
            )
            print(json.dumps(reply), flush=True)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
