"""The invalidation map: which writes invalidate which cached reads.

Every ``@cache.cached(...)`` read and every ``@cache.invalidates(...)`` write
registers when it is decorated, in its cache's registry: ``REGISTRY`` unless the
cache was given ``registry=`` (a ``Registry`` of its own).
``cachewise invalidation-map MODULE`` imports a module (or calls
``MODULE:FACTORY``) and renders ``REGISTRY`` as Markdown: for each
write, the keys and tags it invalidates and the TTLs of the reads they reach; and
the reads that no declared write invalidates, which only their TTL keeps fresh.
That file is the ``docs/cache-invalidation.md`` a team keeps next to its code.

A declaration lives as long as its owner, the decorated function: when that is
garbage-collected (a cache made per tenant and dropped), it leaves the registry.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cachewise import _forksafe

__all__ = ["AFTER_COMMIT", "REGISTRY", "ReadSpec", "Registry", "WriteSpec", "load_target"]

_FIELD = re.compile(r"\{[^{}]*\}")

#: The ``after_commit=`` forms of ``@cache.invalidates``, each the name of the
#: ``cachewise.integrations`` module that carries it out, and when its
#: invalidation runs, as the map says it.
AFTER_COMMIT: dict[str, str] = {
    "sqlalchemy": "after commit, when the transaction of its SQLAlchemy session "
    "argument commits (at once if none is open when it returns or raises)",
    "django": "after commit, when Django's transaction commits (`on_commit`; at once "
    "outside `atomic()`)",
    "dbapi": "after commit, when the cachewise `transaction()` block on its DB-API "
    "connection argument commits (at once if the connection has no transaction "
    "open when it returns or raises)",
}


def shape(template: str) -> str:
    """A template with its field names erased, so ``user:{id}`` and
    ``user:{user_id}`` are recognised as the same key family."""
    return _FIELD.sub("{}", template)


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """A cached read: ``@cache.cached(key, ttl=..., tags=...)``."""

    function: str
    namespace: str
    key: str
    tags: tuple[str, ...]
    ttl: float
    stale_ttl: float
    negative_ttl: float


@dataclass(frozen=True, slots=True)
class WriteSpec:
    """A write that invalidates: ``@cache.invalidates(*keys, tags=...,
    after_commit=...)``. ``after_commit`` is the form the decorator carries out
    (a key of ``AFTER_COMMIT``), or ``""``: when it returns or raises."""

    function: str
    namespace: str
    keys: tuple[str, ...]
    tags: tuple[str, ...]
    summary: str = ""
    after_commit: str = ""

    @property
    def when(self) -> str:
        """When the invalidation runs, in words."""
        return AFTER_COMMIT.get(self.after_commit, "after it returns or raises")


class _Registration:
    """A spec in the registry, and what keeps it there: a count of live owners,
    or ``forever`` (registered without an owner)."""

    __slots__ = ("forever", "owners", "spec")

    def __init__(self, spec: ReadSpec | WriteSpec) -> None:
        self.spec = spec
        self.forever = False
        self.owners = 0


class Registry:
    """Reads and writes declared so far (process-wide, de-duplicated).

    Each registration can be tied to an owner, the object that declares it (the
    decorated function): once every owner of a spec has been garbage-collected,
    the spec leaves the registry, so an application that makes a cache per tenant
    does not grow it forever. A spec registered without an owner stays.
    Registering is O(1): specs are dict keys (in registration order, for
    rendering), not list items searched one by one.
    """

    def __init__(self) -> None:
        self._reads: dict[ReadSpec, _Registration] = {}
        self._writes: dict[WriteSpec, _Registration] = {}
        self._lock = threading.Lock()
        # Registrations whose owner was collected, waiting to be released. The
        # collector may run in any thread at any allocation, including one made
        # while this thread holds _lock, so a finalizer only appends here (atomic,
        # no lock); the registry releases them under its lock on its next use.
        self._dead: deque[_Registration] = deque()
        # > 0 inside retaining(): owners are ignored, registrations kept for good.
        self._retaining = 0
        _forksafe.register(self)

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def reads(self) -> tuple[ReadSpec, ...]:
        """The cached reads, in registration order (a snapshot)."""
        with self._lock:
            self._release_dead()
            return tuple(self._reads)

    @property
    def writes(self) -> tuple[WriteSpec, ...]:
        """The invalidating writes, in registration order (a snapshot)."""
        with self._lock:
            self._release_dead()
            return tuple(self._writes)

    def add_read(self, spec: ReadSpec, owner: object = None) -> None:
        """Record a cached read (once), for as long as ``owner`` lives (``None``:
        for as long as the process)."""
        self._add(self._reads, spec, owner)

    def add_write(self, spec: WriteSpec, owner: object = None) -> None:
        """Record an invalidating write (once), for as long as ``owner`` lives
        (``None``: for as long as the process)."""
        self._add(self._writes, spec, owner)

    def _add(self, table: dict[Any, _Registration], spec: Any, owner: object) -> None:
        if owner is not None:
            try:
                weakref.ref(owner)
            except TypeError:
                raise TypeError(
                    f"the owner of a registration must support weak references; "
                    f"{type(owner).__name__} does not"
                ) from None
        with self._lock:
            self._release_dead()
            registration = table.get(spec)
            if registration is None:
                registration = table[spec] = _Registration(spec)
            if owner is None or self._retaining:
                registration.forever = True
                return
            registration.owners += 1
        # One finalizer per (registration, owner) pair, each releasing one count.
        # It holds the registration, never the owner, and runs at most once.
        release = weakref.finalize(owner, self._dead.append, registration)
        release.atexit = False  # nothing to release at interpreter exit

    def _release_dead(self) -> None:
        """Drop registrations whose last owner was collected (``_lock`` held)."""
        while self._dead:
            registration = self._dead.popleft()
            registration.owners -= 1
            if registration.owners or registration.forever:
                continue
            table: dict[Any, _Registration] = (
                self._reads if isinstance(registration.spec, ReadSpec) else self._writes
            )
            # Only if it is still the registered one: clear() may have dropped it,
            # and a new registration of an equal spec has counts of its own.
            if table.get(registration.spec) is registration:
                del table[registration.spec]

    @contextlib.contextmanager
    def retaining(self) -> Iterator[None]:
        """Keep every registration made inside the block for good, whatever its
        owner. For a process that declares, then renders: ``load_target`` calls a
        factory whose caches and functions are dropped when it returns, and their
        declarations must still be there to render."""
        with self._lock:
            self._retaining += 1
        try:
            yield
        finally:
            with self._lock:
                self._retaining -= 1

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._reads.clear()
            self._writes.clear()

    # -- analysis -------------------------------------------------------------------

    def reads_reached_by(self, write: WriteSpec) -> list[tuple[ReadSpec, str]]:
        """The reads a write invalidates, each with how (``key`` or ``tag ...``)."""
        return _reached(write, self.reads)

    def unreached_reads(self) -> list[ReadSpec]:
        """Reads that no declared write invalidates: only their TTL bounds staleness."""
        return _unreached(self.reads, self.writes)

    # -- rendering --------------------------------------------------------------------

    def to_markdown(self, title: str = "Cache invalidation map") -> str:
        """The map as Markdown."""
        # One snapshot, so that a registration meanwhile cannot tear the rendering.
        reads, writes = self.reads, self.writes
        lines = [
            f"# {title}",
            "",
            "Generated by `cachewise invalidation-map`; do not edit by hand.",
            "",
            "## Writes",
            "",
        ]
        if not writes:
            lines += ["No write declares what it invalidates (`@cache.invalidates`).", ""]
        for write in sorted(writes, key=lambda w: w.function):
            lines.append(f"### `{write.function}`")
            lines.append("")
            if write.summary:
                lines += [write.summary, ""]
            ns = f" (namespace `{write.namespace}`)" if write.namespace else ""
            lines.append(f"Invalidates, {write.when}{ns}:")
            lines.append("")
            lines += [f"- key `{key}`" for key in write.keys]
            lines += [f"- tag `{tag}`" for tag in write.tags]
            lines.append("")
            reached = _reached(write, reads)
            if reached:
                lines += [
                    "| cached read | key | via | ttl | stale window |",
                    "| --- | --- | --- | --- | --- |",
                ]
                lines += [
                    f"| `{read.function}` | `{read.key}` | {how} | {_seconds(read.ttl)} "
                    f"| {_seconds(read.stale_ttl)} |"
                    for read, how in reached
                ]
            else:
                lines.append("No declared cached read uses these keys or tags.")
            lines.append("")
        lines += ["## Reads", ""]
        if reads:
            lines += [
                "| cached read | key | tags | ttl | stale window | negative ttl |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| `{r.function}` | `{r.key}` | {_code_list(r.tags)} | {_seconds(r.ttl)} "
                f"| {_seconds(r.stale_ttl)} | {_seconds(r.negative_ttl)} |"
                for r in sorted(reads, key=lambda r: r.function)
            ]
            lines.append("")
        else:
            lines += ["No cached reads are declared (`@cache.cached`).", ""]
        unreached = _unreached(reads, writes)
        if unreached:
            lines += [
                "## Reads no write invalidates",
                "",
                "Only their TTL bounds how stale these can be:",
                "",
            ]
            lines += [
                f"- `{r.function}` (`{r.key}`, ttl {_seconds(r.ttl)})"
                for r in sorted(unreached, key=lambda r: r.function)
            ]
            lines.append("")
        return "\n".join(lines)


def _meet(one: str, other: str) -> bool:
    """Whether two templates can fill to one key: the same shape, or a filling of
    either that the other's fields can spell (``item:{path}`` with ``"s/1"`` is the
    key of ``item:{shop}/{sku}`` with ``"s"`` and ``"1"``)."""
    if shape(one) == shape(other):
        return True
    return bool(_pattern(one).fullmatch(_sample(other)) or _pattern(other).fullmatch(_sample(one)))


@functools.lru_cache(maxsize=1024)
def _pattern(template: str) -> re.Pattern[str]:
    """The keys a template can fill: its text, and for each field any text
    without the characters the template escapes (see ``KeyTemplate.format``)."""
    from cachewise.keys import KeyTemplate

    try:
        escaped = KeyTemplate(template)._escaped
    except (TypeError, ValueError):
        return re.compile(re.escape(template))
    allowed = "[^" + re.escape("".join(sorted(escaped))) + "]"
    field = f"(?:{allowed}|%[0-9A-F]{{2}})*"
    parts = _FIELD.split(template)
    return re.compile(field.join(re.escape(part) for part in parts))


def _sample(template: str) -> str:
    """A key the template fills to: each field a plain letter."""
    return _FIELD.sub("x", template)


def _reached(write: WriteSpec, reads: Iterable[ReadSpec]) -> list[tuple[ReadSpec, str]]:
    """The ``reads`` that ``write`` invalidates, each with how."""
    found: list[tuple[ReadSpec, str]] = []
    for read in reads:
        if read.namespace != write.namespace:
            continue
        if any(_meet(key, read.key) for key in write.keys):
            found.append((read, "key"))
            continue
        shared = sorted({shape(t) for t in read.tags if any(_meet(w, t) for w in write.tags)})
        if shared:
            found.append((read, "tag " + ", ".join(f"`{t}`" for t in shared)))
    return found


def _unreached(reads: Sequence[ReadSpec], writes: Iterable[WriteSpec]) -> list[ReadSpec]:
    """The ``reads`` no write of ``writes`` invalidates."""
    reached = {id(read) for write in writes for read, _ in _reached(write, reads)}
    return [read for read in reads if id(read) not in reached]


def _seconds(value: float) -> str:
    if value == 0:
        return "-"
    return f"{value:g} s"


def _code_list(items: Iterable[str]) -> str:
    rendered = ", ".join(f"`{item}`" for item in items)
    return rendered or "-"


#: The process-wide registry the decorators of every cache made without ``registry=``
#: write to, and the one ``cachewise invalidation-map`` renders.
REGISTRY = Registry()


def load_target(target: str) -> None:
    """Import ``MODULE`` (its decorators register), or import ``MODULE:FACTORY`` and
    call ``FACTORY()`` for applications that build their caches in a factory."""
    module_name, _, factory = target.partition(":")
    # Retained: a factory usually drops what it built when it returns, which would
    # take its declarations out of the registry before they are rendered.
    with REGISTRY.retaining():
        module = importlib.import_module(module_name)
        if factory:
            built = getattr(module, factory, None)
            if not callable(built):
                raise ValueError(f"{module_name} has no callable {factory!r}")
            built()
