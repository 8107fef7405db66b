"""A worker process for cross-process tests: threads in one process read one key.

    python -m tests.support.herd_worker URL KEY THREADS START_AT LOAD_SECONDS [OPTIONS_JSON]

Each thread waits until the wall clock reaches START_AT, then calls
``get_or_load(KEY, loader)``; the loader INCRs ``loads:KEY`` in Redis (so loads are
counted across processes), sleeps LOAD_SECONDS and returns its process id. With
``{"hold": true}`` the loader instead SETs ``holding:KEY`` and sleeps for a minute
(a lease holder for the test to SIGKILL). Prints one JSON line: the values seen and
when each thread got its value.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import redis

from cachewise import Cache


def main(argv: list[str]) -> int:
    url, key, threads, start_at, load_seconds = argv[:5]
    options: dict[str, Any] = json.loads(argv[5]) if len(argv) > 5 else {}
    hold = bool(options.pop("hold", False))
    raw = redis.Redis.from_url(url.split("?", 1)[0])  # our query options are not redis-py's
    cache = Cache.from_url(url, **options)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def loader() -> int:
        raw.incr(f"loads:{key}")
        if hold:
            raw.set(f"holding:{key}", os.getpid())
            time.sleep(60)
        time.sleep(float(load_seconds))
        return os.getpid()

    def body() -> None:
        delay = float(start_at) - time.time()
        if delay > 0:
            time.sleep(delay)
        started = time.time()
        value = cache.get_or_load(key, loader)
        done = time.time()
        with lock:
            results.append({"value": value, "started": started, "done": done})

    workers = [threading.Thread(target=body) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps({"pid": os.getpid(), "results": results, "stats": cache.stats().as_dict()}))
    cache.close()
    raw.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
