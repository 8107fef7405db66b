"""The configurations the history checker runs: backend x front end x invalidation
x options x faults, as a curated list (the full product would take an hour)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CONFIGS", "Config", "by_name"]

BACKENDS = ("memory", "redis", "cluster")
#: sync: threads on a Cache; async: tasks on an AsyncCache; both: the two on one
#: store (one MemoryBackend object, or one Redis URL); procs: a second process
#: (spawned) with its own cache on the same Redis; fork: a child forked after the
#: parent used the cache (background refreshes included) and while its threads run.
FRONTENDS = ("sync", "async", "both", "procs", "fork")
#: keys: delete / delete_many / cached.invalidate; tags: invalidate_tags; versions:
#: a cache version bump (or a delete); dbapi / sqlalchemy: after-commit helpers on
#: SQLite (keys or tags).
INVALIDATIONS = ("keys", "tags", "versions", "dbapi", "sqlalchemy")
FAULTS = ("restart", "blackhole")
#: Harness self-tests only: a cache used wrongly must show violations or a hang.
BROKEN = ("no-invalidate", "invalidate-first", "hang")


@dataclass(frozen=True)
class Config:
    """One configuration of the history checker."""

    backend: str
    frontend: str
    invalidation: str = "keys"
    swr: bool = False  # stale-while-revalidate: short ttl, stale_ttl > 0
    early: bool = False  # XFetch early refresh: short ttl, high early_refresh
    mix: bool = False  # set() and clear() as writes, plain clears, get_many reads
    fault: str | None = None  # a Redis restart or a black hole mid-run
    cancel: bool = False  # async waiters cancelled at random
    broken: str | None = None
    seconds: float = 0.4  # length of the short run (make test)

    def __post_init__(self) -> None:
        checks = (
            (self.backend, BACKENDS),
            (self.frontend, FRONTENDS),
            (self.invalidation, INVALIDATIONS),
            (self.fault, (None, *FAULTS)),
            (self.broken, (None, *BROKEN)),
        )
        for value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")
        if self.fault is not None and self.backend != "redis":
            raise ValueError("faults are injected into a standalone Redis")
        one_front_end = self.frontend in ("sync", "async")
        if self.mix and not one_front_end:
            # Writers of a key take turns (set() writes what it read), by a lock that
            # one front end's actors share.
            raise ValueError("mix needs one front end (sync or async)")
        if self.invalidation == "versions" and not one_front_end:
            # A version bump is the bumping front end's own: another front end or
            # process would go on reading the old version, as it should.
            raise ValueError("versions needs one front end (sync or async)")
        if self.invalidation == "sqlalchemy" and self.frontend != "sync":
            raise ValueError("sqlalchemy runs with a sync Session on a Cache")
        if self.cancel and self.frontend not in ("async", "both"):
            raise ValueError("cancel needs asyncio tasks")

    @property
    def name(self) -> str:
        flags = [
            flag
            for flag, on in (
                ("swr", self.swr),
                ("early", self.early),
                ("mix", self.mix),
                (self.fault or "", self.fault is not None),
                ("cancel", self.cancel),
                (f"broken={self.broken}", self.broken is not None),
            )
            if on
        ]
        return "-".join((self.backend, self.frontend, self.invalidation)) + "".join(
            f"+{flag}" for flag in flags
        )

    @property
    def tagged(self) -> bool:
        """Whether reads carry tags (so writes may invalidate by tag)."""
        return self.invalidation in ("tags", "dbapi", "sqlalchemy")

    @property
    def shared_store(self) -> bool:
        """Whether the source of truth is the SQLite file rather than a dict."""
        return (
            self.frontend == "procs"
            or (self.frontend == "fork" and self.backend != "memory")
            or self.invalidation in ("dbapi", "sqlalchemy")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _configs() -> list[Config]:
    c = Config
    memory = [
        c("memory", "sync"),
        c("memory", "async"),
        c("memory", "both"),
        c("memory", "sync", "tags"),
        c("memory", "async", "tags"),
        c("memory", "both", "tags"),
        c("memory", "sync", "versions"),
        c("memory", "async", "versions"),
        c("memory", "sync", swr=True),
        c("memory", "async", "tags", early=True),
        c("memory", "both", swr=True, early=True),
        c("memory", "sync", "tags", mix=True),
        c("memory", "async", mix=True),
        c("memory", "sync", "dbapi"),
        c("memory", "async", "dbapi"),
        c("memory", "sync", "sqlalchemy"),
        c("memory", "async", cancel=True),
        c("memory", "fork", swr=True, early=True),
    ]
    redis = [
        c("redis", "sync"),
        c("redis", "async"),
        c("redis", "both"),
        c("redis", "sync", "tags"),
        c("redis", "async", "tags"),
        c("redis", "both", "tags", seconds=0.8),
        c("redis", "sync", "versions"),
        c("redis", "sync", swr=True),
        c("redis", "async", "tags", early=True),
        c("redis", "sync", "tags", mix=True),
        c("redis", "async", mix=True, seconds=0.8),
        c("redis", "procs", seconds=0.8),
        c("redis", "procs", "tags", seconds=0.8),
        c("redis", "fork", swr=True, early=True, seconds=0.8),
        c("redis", "sync", "dbapi"),
        c("redis", "sync", "sqlalchemy"),
        c("redis", "async", cancel=True),
        c("redis", "sync", fault="restart", seconds=1.0),
        c("redis", "async", "tags", fault="restart", seconds=1.0),
        c("redis", "procs", fault="restart", seconds=1.2),
        c("redis", "sync", fault="blackhole", seconds=1.0),
        c("redis", "procs", fault="blackhole", seconds=1.2),
        c("redis", "async", fault="blackhole", cancel=True, seconds=1.0),
    ]
    cluster = [
        c("cluster", "sync"),
        c("cluster", "async", "tags"),
        c("cluster", "both"),
        c("cluster", "sync", "tags", mix=True),
        c("cluster", "procs", "tags", seconds=1.2),
    ]
    return memory + redis + cluster


#: Every configuration, in the order the short run goes through them.
CONFIGS: tuple[Config, ...] = tuple(_configs())


def by_name(name: str) -> Config:
    """The configuration called ``name`` (see ``Config.name``)."""
    for config in CONFIGS:
        if config.name == name:
            return config
    raise KeyError(name)
