"""One rule for every exception a backend call can end with.

The front ends and the circuit breaker all have to answer the same question when
a call fails: whose fault was it? Three answers, and what each side does with it:

- ``CALLER``: the caller's own input (a value the codec refuses, an entry over the
  size limit, a weigher that raised, tags on a backend without tags). It was never
  sent. The front ends raise it to the caller; the breaker gives no verdict.
- ``NOT_SENT``: refused inside this process before reaching the backend (its own
  queue was full, the breaker is open, the notification channel went quiet, a key
  this process could not encode). It says nothing about the backend's health:
  the front ends degrade around it like any failure; the breaker gives no verdict.
- ``BACKEND``: anything else an ``Exception`` can be: the backend failed. The
  front ends degrade (count, log, serve from the source); the breaker counts it.
- ``INTERRUPTED``: not an ``Exception`` at all (cancellation, ``KeyboardInterrupt``,
  ``SystemExit``): nobody judges it and it always propagates.

Also here: the fast-failure rule (a failure that came back sooner than any network
wait could is worth one immediate second try).
"""

from __future__ import annotations

import enum

from cachewise._errors import (
    BackpressureError,
    CircuitOpenError,
    NotificationsLostError,
    TagsUnsupportedError,
    WeigherError,
)
from cachewise.serialization import SerializationError, ValueTooLargeError

__all__ = ["FAST_FAILURE", "ErrorKind", "classify", "retry_fast_failure"]


class ErrorKind(enum.Enum):
    """Whose fault an exception from a backend call is (see the module docstring)."""

    CALLER = "caller"
    NOT_SENT = "not sent"
    BACKEND = "backend"
    INTERRUPTED = "interrupted"


# Order matters only for readability: the groups do not overlap.
_CALLER: tuple[type[BaseException], ...] = (
    SerializationError,
    ValueTooLargeError,
    WeigherError,
    TagsUnsupportedError,
)
# A CircuitOpenError raised inside a call is a connection pool's gate refusing a
# queued call (see the breaker's admit_queued); a UnicodeError is a key or value
# this process could not encode: neither was sent.
_NOT_SENT: tuple[type[BaseException], ...] = (
    BackpressureError,
    CircuitOpenError,
    NotificationsLostError,
    UnicodeError,
)


# redis-py's own pool limit ("Too many connections"): this process's queue, not
# the server's health. Matched by name: redis-py is an optional dependency.
_NOT_SENT_NAMES = frozenset({"MaxConnectionsError"})


def classify(exc: BaseException) -> ErrorKind:
    """Whose fault ``exc`` is: the caller's, never sent, or the backend's."""
    if isinstance(exc, _CALLER):
        return ErrorKind.CALLER
    if isinstance(exc, _NOT_SENT):
        return ErrorKind.NOT_SENT
    if isinstance(exc, Exception):
        if any(cls.__name__ in _NOT_SENT_NAMES for cls in type(exc).__mro__):
            return ErrorKind.NOT_SENT
        return ErrorKind.BACKEND
    return ErrorKind.INTERRUPTED


#: Seconds: a failed call that came back sooner than this did not wait on the
#: network (a connection refused, a reset pooled connection), so one immediate
#: second try costs nothing and often lands (a fresh connection).
FAST_FAILURE = 0.05


def retry_fast_failure(elapsed: float, attempt: int) -> bool:
    """Whether a failed call ``elapsed`` seconds long, on try ``attempt`` (from 1),
    gets one more try at once: only the first, and only if it failed fast."""
    return attempt == 1 and elapsed <= FAST_FAILURE
