"""What both circuit breakers share: state, lock, bookkeeping, and how a breaker
class is chosen for what the wrapped backend can do.

Capabilities are explicit: every optional method a front end looks for (tags,
leases, waits, stats) is written out, typed, in a small mixin, and a breaker
instance is of a class made of its flavour plus the mixins its backend has a
method for (``_BreakerBase.__new__``). So a wrapped backend without tags makes a
breaker without ``tag_stamp``, and the front ends' checks (``isinstance`` against
the runtime-checkable protocols of ``_protocol``, ``getattr``) see exactly what
they would see on the backend itself. Other plain attributes of the wrapped
backend (a Redis backend's ``client``, ``codec``...) still read through, untyped
(``__getattr__``); ``inner`` is the typed way to them.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

from cachewise import _forksafe
from cachewise._core.breaker import PASS, REFUSED, Breaker, BreakerPolicy, State
from cachewise._core.entry import Entry
from cachewise._errors import CircuitOpenError
from cachewise.backends._protocol import is_async_backend

logger = logging.getLogger("cachewise")

# Invalidations are always sent, even while open: refusing one would leave an old
# value for every other process to read. They still count towards the breaker.
_ALWAYS_SENT = frozenset({"delete", "delete_many", "invalidate_tags", "clear"})

#: Set while a call may pass a connection pool's gate although the breaker is not
#: closed: the half-open probe, and invalidations (always sent). A context
#: variable, so it follows the call into the pool's checkout (same task) and no
#: other call sees it.
_GATE_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cachewise_breaker_gate_pass", default=False
)

_B = TypeVar("_B", bound="_BreakerBase")

# (base class, mixins) -> the class made of them; a handful per process.
_classes: dict[tuple[type, tuple[type, ...]], type] = {}


def _class_for(base: type, backend: object, capabilities: dict[str, type]) -> type:
    """``base`` with the mixin of each capability ``backend`` has (hasattr, as the
    protocol checks do on the backend itself)."""
    mixins = tuple(dict.fromkeys(m for name, m in capabilities.items() if hasattr(backend, name)))
    if not mixins:
        return base
    made = _classes.get((base, mixins))
    if made is None:
        # Named as its base, so reprs and error messages read as before.
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__}
        made = _classes.setdefault((base, mixins), type(base.__name__, (*mixins, base), namespace))
    return made


class _Inner:
    """What a capability mixin reads: the wrapped backend."""

    _inner: Any


# -- capabilities no breaker guards (they send nothing, or only wait) --------------


class _WaitTimeout(_Inner):
    @property
    def wait_timeout(self) -> float:
        """As the wrapped backend (leases)."""
        return float(self._inner.wait_timeout)


class _WaitAsync(_Inner):
    async def wait_async(self, key: str, timeout: float) -> bool:
        """The wrapped in-process store's ``wait_async`` (never refused)."""
        return bool(await self._inner.wait_async(key, timeout))


class _Discard(_Inner):
    def discard(self, key: str, entry: Entry) -> bool:
        """The wrapped in-process store's ``discard`` (never refused)."""
        return bool(self._inner.discard(key, entry))


class _Evictions(_Inner):
    @property
    def evictions(self) -> int:
        """As the wrapped backend (``BackendStats``)."""
        return int(self._inner.evictions)


class _DecodeErrors(_Inner):
    @property
    def decode_errors(self) -> int:
        """As the wrapped backend."""
        return int(self._inner.decode_errors)


class _LeaseScope(_Inner):
    @property
    def lease_scope(self) -> object:
        """As the wrapped backend: how its leases are named."""
        return self._inner.lease_scope


#: Capabilities of either flavour that no breaker guards: name -> mixin.
PLAIN: dict[str, type] = {
    "wait_timeout": _WaitTimeout,
    "wait_async": _WaitAsync,
    "discard": _Discard,
    "evictions": _Evictions,
    "decode_errors": _DecodeErrors,
    "lease_scope": _LeaseScope,
}


class _BreakerBase:
    """The state, the lock and the bookkeeping both flavours share."""

    #: Optional attribute name -> the mixin that provides it (set per flavour).
    _capabilities: ClassVar[dict[str, type]] = {}
    #: Whether the backend's calls are awaited (set per flavour).
    _wraps_async: ClassVar[bool] = False

    def __new__(cls: type[_B], backend: Any, *args: Any, **kwargs: Any) -> _B:
        # An instance of this class plus the capabilities ``backend`` has.
        return cast(_B, object.__new__(_class_for(cls, backend, cls._capabilities)))

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
        # The front ends refuse a backend of the other flavour; wrapped, it would
        # get past that check and fail on every call (attack on issue 11).
        if is_async_backend(backend) != self._wraps_async:
            flavour = "an async" if self._wraps_async else "a sync"
            raise TypeError(
                f"{type(self).__name__} wraps {flavour} backend; "
                f"{type(backend).__name__} is not one (use the other circuit breaker)"
            )
        self._inner = backend
        self._breaker = Breaker(policy)
        self._clock = clock
        self._name = name or type(backend).__name__
        self._lock = threading.Lock()
        _forksafe.register(self)
        self._rejected = 0

    def admit_queued(self) -> None:
        """For a connection pool, after a call waited for a connection: raise
        ``CircuitOpenError`` unless the breaker is closed, or the call is the
        half-open probe or an invalidation. Calls queued behind calls to a dead
        server then fail at once when the breaker opens, instead of each being sent
        to it in turn (one timeout each). Counted as a rejection. (Both flavours:
        threads queue for the sync pool as tasks do for the async one.)"""
        if self._breaker.state is State.CLOSED or _GATE_PASS.get():
            return
        with self._lock:
            self._rejected += 1
        raise CircuitOpenError(
            f"circuit breaker for {self._name} opened while the call queued for a connection"
        )

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

    def _judge(self, operation: str, exc: BaseException, probe: int) -> None:
        """A backend failure of ``operation``: count it (the async flavour may
        excuse a timeout)."""
        self._failed(operation, exc)

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
        # Only reached for names the class lacks. A capability the class lacks is
        # one the wrapped backend lacks (see _class_for): it stays missing. Other
        # public attributes read through, unguarded, as plain data.
        if name.startswith("_") or name in self._capabilities:
            raise AttributeError(name)
        return getattr(self._inner, name)
