"""Circuit breakers as wrapper backends: ``CircuitBreaker`` (sync) and
``AsyncCircuitBreaker``.

A breaker wraps any backend and forwards every call while the backend is healthy.
When calls keep failing it opens: calls then fail at once with
``CircuitOpenError``, which the front ends treat like any backend failure (a read
is a miss, a write is skipped), so requests go straight to the loader with no
network wait. After ``open_seconds`` one probe call is let through; its success
closes the breaker. State and transitions show in ``Cache.stats()`` and go to the
``cachewise`` logger.

Capabilities of the wrapped backend (leases, tags) stay visible through the
wrapper, each call guarded the same way. Serialization errors are the caller's,
not the backend's, and never count as failures; nor do calls queued too long in
this process (``BackpressureError``, ``PoolTimeoutError``), nor, for
``AsyncCircuitBreaker``, timeouts while the event loop itself runs late (see
``_LoopLag``). A call that ends with no verdict at all (cancelled, interrupted)
counts for nothing; if it was the half-open probe, the next call probes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cachewise import _forksafe
from cachewise._core.breaker import PASS, REFUSED, Breaker, BreakerPolicy, State
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify
from cachewise._errors import CircuitOpenError

logger = logging.getLogger("cachewise")

# Invalidations are always sent, even while open: refusing one would leave an old
# value for every other process to read. They still count towards the breaker.
_ALWAYS_SENT = frozenset({"delete", "delete_many", "invalidate_tags", "clear"})
# Optional capability methods guarded like the rest, when the wrapped backend has them.
_GUARDED = frozenset(
    {"read_or_lease", "set_leased", "release", "wait", "tag_stamp", "invalidate_tags", "get_tagged"}
)


#: How often the event-loop heartbeat runs, how late it must run to count as the
#: loop lagging, and how long that verdict lasts (a socket timeout and some).
_BEAT = 0.02
_LAG = 0.05
_LAG_MEMORY = 0.5


class _LoopLag:
    """Whether the running event loop has been late lately.

    An asyncio socket timeout fires when the loop gets round to it: on a loop too
    busy to run its callbacks on time, a call times out although the server
    answered. Such a timeout says nothing about the backend, so it must not open
    the breaker (the call still fails, and the cache degrades around it). A
    heartbeat callback every ``_BEAT`` seconds measures how late the loop runs.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._lagging_until = float("-inf")

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the heartbeat on ``loop`` (the one calls run on now)."""
        if loop is self.loop:
            return
        self.stop()
        self.loop = loop
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._expected = loop.time() + _BEAT
        # A weak reference: the heartbeat must not keep its owner alive.
        self._handle = loop.call_at(self._expected, _beat, weakref.ref(self))

    def beat(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        now = loop.time()
        if now - self._expected > _LAG:
            self._lagging_until = now + _LAG_MEMORY
        self._schedule(loop)

    def lagging(self) -> bool:
        """Whether the loop ran late within the last ``_LAG_MEMORY`` seconds, or
        is late now (a heartbeat overdue: a task woken by its timeout can run
        before a heartbeat that was due earlier)."""
        loop = self.loop
        if loop is None:
            return False
        now = loop.time()
        return now <= self._lagging_until or now - self._expected > _LAG

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.loop = None


def _beat(ref: weakref.ref[_LoopLag]) -> None:
    lag = ref()
    if lag is not None:
        lag.beat()


def _is_timeout(exc: BaseException) -> bool:
    # redis-py's TimeoutError is not the builtin one: match on the name.
    return any(cls.__name__ == "TimeoutError" for cls in type(exc).__mro__)


#: Set while a call may pass a connection pool's gate although the breaker is not
#: closed: the half-open probe, and invalidations (always sent). A context
#: variable, so it follows the call into the pool's checkout (same task) and no
#: other call sees it.
_GATE_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cachewise_breaker_gate_pass", default=False
)


class _BreakerBase:
    """The state, the lock and the bookkeeping both flavours share."""

    def __init__(
        self,
        backend: Any,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        """Wrap ``backend``; ``policy`` says when to open (``BreakerPolicy()``),
        ``clock`` is seconds (monotonic), ``name`` labels logs (the backend's type)."""
        self._inner = backend
        self._breaker = Breaker(policy)
        self._clock = clock
        self._name = name or type(backend).__name__
        self._lock = threading.Lock()
        _forksafe.register(self)
        self._rejected = 0

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def inner(self) -> Any:
        """The wrapped backend."""
        return self._inner

    @property
    def breaker_state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return self._breaker.state.value

    @property
    def breaker_opens(self) -> int:
        """How many times the breaker opened."""
        return self._breaker.opens

    @property
    def breaker_rejections(self) -> int:
        """Calls refused while open (they went to the loader instead)."""
        return self._rejected

    @property
    def policy(self) -> BreakerPolicy:
        """When the breaker opens and for how long."""
        return self._breaker.policy

    def _admit(self, operation: str) -> int:
        """Let the call through or raise ``CircuitOpenError``. Returns the number of
        the half-open probe this call is, or ``PASS`` (0) for any other call: only
        the probe itself may give the probe back (``_not_judged``)."""
        if self._breaker.state is State.CLOSED:
            return PASS  # (an unlocked read: a call racing the opening may go through)
        with self._lock:
            admitted = self._breaker.admit(self._clock())
            if admitted == REFUSED:
                self._rejected += 1
        if admitted == REFUSED:
            raise CircuitOpenError(
                f"circuit breaker for {self._name} is open ({operation} skipped)"
            )
        return admitted

    def _succeeded(self) -> None:
        with self._lock:
            change = self._breaker.success(self._clock())
        if change is State.CLOSED:
            logger.warning("cachewise: circuit breaker for %s closed: backend is back", self._name)

    def _failed(self, operation: str, exc: BaseException) -> None:
        with self._lock:
            change = self._breaker.failure(self._clock())
        if change is State.OPEN:
            logger.warning(
                "cachewise: circuit breaker for %s opened (%s failed: %s: %s); calls go "
                "straight to the loader for %.1f s",
                self._name,
                operation,
                type(exc).__name__,
                exc,
                self._breaker.policy.open_seconds,
            )

    def _not_judged(self, probe: int) -> None:
        # The call ended with no verdict on the backend's health (bad input, a late
        # event loop, cancelled, interrupted): if it was the half-open probe, let
        # the next call probe instead (else the breaker would stay half-open, and
        # the cache bypassed, for good). Any other call leaves the probe alone.
        if probe:
            with self._lock:
                self._breaker.cancel_probe(probe)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class lacks: capabilities and plain attributes
        # of the wrapped backend.
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._inner, name)
        if name in _GUARDED and callable(value):
            return self._guard(name, value)
        return value

    def _guard(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError


class CircuitBreaker(_BreakerBase):
    """A circuit breaker around a sync backend (for ``Cache``)."""

    def _call(self, operation: str, method: Callable[..., Any], *args: Any) -> Any:
        probe = PASS if operation in _ALWAYS_SENT else self._admit(operation)
        try:
            result = method(*args)
        except BaseException as exc:
            # Only the backend's own failures count; the caller's errors, calls
            # never sent, KeyboardInterrupt and SystemExit get no verdict.
            if classify(exc) is ErrorKind.BACKEND:
                self._failed(operation, exc)
            else:
                self._not_judged(probe)
            raise
        self._succeeded()
        return result

    def _guard(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            return self._call(name, method, *args)

        return guarded

    @property
    def nonblocking(self) -> bool:
        """As the wrapped backend."""
        return bool(getattr(self._inner, "nonblocking", False))

    def get(self, key: str) -> Entry | None:
        """Guarded ``get``."""
        result: Entry | None = self._call("get", self._inner.get, key)
        return result

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Guarded ``get_many``."""
        result: list[Entry | None] = self._call("get_many", self._inner.get_many, keys)
        return result

    def set(self, key: str, entry: Entry) -> None:
        """Guarded ``set``."""
        self._call("set", self._inner.set, key, entry)

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """Guarded ``set_many``."""
        self._call("set_many", self._inner.set_many, items)

    def delete(self, key: str) -> bool:
        """Guarded ``delete``."""
        return bool(self._call("delete", self._inner.delete, key))

    def delete_many(self, keys: Sequence[str]) -> int:
        """Guarded ``delete_many``."""
        return int(self._call("delete_many", self._inner.delete_many, keys))

    def clear(self, prefix: str = "") -> int:
        """Guarded ``clear``."""
        return int(self._call("clear", self._inner.clear, prefix))

    def close(self) -> None:
        """Close the wrapped backend (never refused)."""
        self._inner.close()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self._inner!r}, state={self.breaker_state})"


class AsyncCircuitBreaker(_BreakerBase):
    """A circuit breaker around an async backend (for ``AsyncCache``)."""

    def __init__(
        self,
        backend: Any,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        super().__init__(backend, policy, clock=clock, name=name)
        self._lag = _LoopLag()
        self._lag_timeouts = 0

    def _succeeded(self) -> None:
        # No lock: one event loop drives an async breaker, and this runs on every
        # call that succeeds.
        if self._breaker.success(self._clock()) is State.CLOSED:
            logger.warning("cachewise: circuit breaker for %s closed: backend is back", self._name)

    @property
    def loop_lag_timeouts(self) -> int:
        """Timeouts not held against the backend: the event loop itself ran late."""
        return self._lag_timeouts

    async def _call(self, operation: str, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        loop = self._lag.loop
        if loop is None or loop.is_closed():  # (a new loop: asyncio.run again)
            self._lag.watch(asyncio.get_running_loop())
        if operation in _ALWAYS_SENT:
            probe = PASS
            gate_pass = True
        else:
            probe = self._admit(operation)
            gate_pass = probe != PASS
        token = _GATE_PASS.set(True) if gate_pass else None
        try:
            result = await method(*args)
        except BaseException as exc:
            # As the sync flavour; a cancellation (a request timeout, a client
            # gone) is INTERRUPTED: no verdict either.
            if classify(exc) is ErrorKind.BACKEND:
                self._judge(operation, exc, probe)
            else:
                self._not_judged(probe)
            raise
        finally:
            if token is not None:
                _GATE_PASS.reset(token)
        self._succeeded()
        return result

    def _judge(self, operation: str, exc: BaseException, probe: int) -> None:
        if _is_timeout(exc) and self._lag.lagging():
            self._lag_timeouts += 1
            self._not_judged(probe)  # the loop was late, not (for all we know) the backend
        else:
            self._failed(operation, exc)

    def admit_queued(self) -> None:
        """For a connection pool, after a call waited for a connection: raise
        ``CircuitOpenError`` unless the breaker is closed, or the call is the
        half-open probe or an invalidation. Calls queued behind calls to a dead
        server then fail at once when the breaker opens, instead of each being sent
        to it in turn (one timeout each). Counted as a rejection."""
        if self._breaker.state is State.CLOSED or _GATE_PASS.get():
            return
        with self._lock:
            self._rejected += 1
        raise CircuitOpenError(
            f"circuit breaker for {self._name} opened while the call queued for a connection"
        )

    def _guard(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(*args: Any) -> Any:
            return await self._call(name, method, *args)

        return guarded

    async def get(self, key: str) -> Entry | None:
        """Guarded ``get`` (``_call``, inlined for the closed state: it is the hit
        path, and no call admitted while closed is a probe)."""
        if self._breaker.state is not State.CLOSED:
            result: Entry | None = await self._call("get", self._inner.get, key)
            return result
        loop = self._lag.loop
        if loop is None or loop.is_closed():  # (a new loop: asyncio.run again)
            self._lag.watch(asyncio.get_running_loop())
        try:
            result = await self._inner.get(key)
        except Exception as exc:
            if classify(exc) is ErrorKind.BACKEND:
                self._judge("get", exc, PASS)
            raise
        self._succeeded()
        return result

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Guarded ``get_many``."""
        result: list[Entry | None] = await self._call("get_many", self._inner.get_many, keys)
        return result

    async def set(self, key: str, entry: Entry) -> None:
        """Guarded ``set``."""
        await self._call("set", self._inner.set, key, entry)

    async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """Guarded ``set_many``."""
        await self._call("set_many", self._inner.set_many, items)

    async def delete(self, key: str) -> bool:
        """Guarded ``delete``."""
        return bool(await self._call("delete", self._inner.delete, key))

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Guarded ``delete_many``."""
        return int(await self._call("delete_many", self._inner.delete_many, keys))

    async def clear(self, prefix: str = "") -> int:
        """Guarded ``clear``."""
        return int(await self._call("clear", self._inner.clear, prefix))

    async def aclose(self) -> None:
        """Close the wrapped backend (never refused)."""
        self._lag.stop()
        await self._inner.aclose()

    def __repr__(self) -> str:
        return f"AsyncCircuitBreaker({self._inner!r}, state={self.breaker_state})"
