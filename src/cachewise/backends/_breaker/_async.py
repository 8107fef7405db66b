"""Async circuit breaker (the source of ``_sync``)."""  # unasync: sync="""Sync circuit breaker."""

from __future__ import annotations

import asyncio  # unasync: async-only
import time  # unasync: async-only
from collections.abc import (
    Awaitable,  # unasync: async-only
    Callable,
    Sequence,
)
from typing import Any

from cachewise._core.breaker import (
    PASS,
    BreakerPolicy,  # unasync: async-only
    State,
)
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify
from cachewise._core.readflow import LeaseReply
from cachewise.backends._breaker._common import (
    _ALWAYS_SENT,
    _GATE_PASS,
    PLAIN,
    _BreakerBase,
    _Inner,
    logger,  # unasync: async-only
)
from cachewise.backends._breaker._lag import _is_timeout, _LoopLag  # unasync: async-only


class _Guarded(_Inner):
    """What a guarded capability mixin calls: the breaker's ``_call``."""

    async def _call(self, operation: str, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        raise NotImplementedError


# -- guarded capabilities: each call admitted and judged as get/set are ------------


class _TagStamp(_Guarded):
    async def tag_stamp(self, tags: Sequence[str]) -> Any:
        """Guarded ``tag_stamp`` (tags)."""
        return await self._call("tag_stamp", self._inner.tag_stamp, tags)


class _InvalidateTags(_Guarded):
    async def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Guarded ``invalidate_tags`` (tags; sent even while open)."""
        await self._call("invalidate_tags", self._inner.invalidate_tags, tags)


class _GetTagged(_Guarded):
    async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """Guarded ``get_tagged`` (tags)."""
        result: Entry | None = await self._call("get_tagged", self._inner.get_tagged, key, tags)
        return result


class _ReadOrLease(_Guarded):
    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Guarded ``read_or_lease`` (leases)."""
        reply: LeaseReply = await self._call(
            "read_or_lease", self._inner.read_or_lease, key, token, mode
        )
        return reply


class _SetLeased(_Guarded):
    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Guarded ``set_leased`` (leases)."""
        return bool(await self._call("set_leased", self._inner.set_leased, key, entry, token))


class _Release(_Guarded):
    async def release(self, key: str, token: str) -> bool:
        """Guarded ``release`` (leases)."""
        return bool(await self._call("release", self._inner.release, key, token))


class _Wait(_Guarded):
    async def wait(self, key: str, timeout: float) -> bool:
        """Guarded ``wait`` (leases)."""
        return bool(await self._call("wait", self._inner.wait, key, timeout))


#: Optional attribute name -> the mixin that provides it.
CAPABILITIES: dict[str, type] = {
    "tag_stamp": _TagStamp,
    "invalidate_tags": _InvalidateTags,
    "get_tagged": _GetTagged,
    "read_or_lease": _ReadOrLease,
    "set_leased": _SetLeased,
    "release": _Release,
    "wait": _Wait,
    **PLAIN,
}
# A sync breaker says it never blocks only if its backend says so (an
# isinstance(NonBlockingBackend) check must see what it sees on the backend).
# unasync: sync-only
# class _Nonblocking(_Inner):
#     @property
#     def nonblocking(self) -> bool:
#         """As the wrapped backend."""
#         return bool(self._inner.nonblocking)
#
#
# CAPABILITIES["nonblocking"] = _Nonblocking
# unasync: end


class AsyncCircuitBreaker(_BreakerBase, _Guarded):
    """A circuit breaker around an async backend (for ``AsyncCache``)."""

    _capabilities = CAPABILITIES
    # The flavour of backend it can wrap (its calls are awaited, or not).
    _wraps_async = True  # unasync: sync=_wraps_async = False

    # unasync: async-only
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

    def _judge(self, operation: str, exc: BaseException, probe: int) -> None:
        if _is_timeout(exc) and self._lag.lagging():
            self._lag_timeouts += 1
            self._not_judged(probe)  # the loop was late, not (for all we know) the backend
        else:
            self._failed(operation, exc)

    # unasync: end

    async def _call(self, operation: str, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        self._lag.watch_running()  # unasync: async-only
        probe = PASS if operation in _ALWAYS_SENT else self._admit(operation)
        # The probe and invalidations may pass a pool's gate (see admit_queued).
        gate_pass = probe != PASS or operation in _ALWAYS_SENT
        token = _GATE_PASS.set(True) if gate_pass else None
        try:
            result = await method(*args)
        except BaseException as exc:
            # Only the backend's own failures count; the caller's errors, calls
            # never sent, cancellations (a request timeout, a client gone),
            # KeyboardInterrupt and SystemExit get no verdict.
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

    async def get(self, key: str) -> Entry | None:
        """Guarded ``get`` (``_call``, inlined for the closed state: it is the hit
        path, and no call admitted while closed is a probe)."""
        if self._breaker.state is not State.CLOSED:
            result: Entry | None = await self._call("get", self._inner.get, key)
            return result
        # unasync: async-only
        loop = self._lag.loop
        if loop is None or loop.is_closed():  # (a new loop: asyncio.run again)
            self._lag.watch(asyncio.get_running_loop())
        # unasync: end
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
        self._lag.stop()  # unasync: async-only
        await self._inner.aclose()

    def __repr__(self) -> str:
        return f"AsyncCircuitBreaker({self._inner!r}, state={self.breaker_state})"
