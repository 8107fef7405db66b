"""Circuit breakers as wrapper backends: ``CircuitBreaker`` (sync, generated from
the async source) and ``AsyncCircuitBreaker`` (``_async``, hand-written)."""

from cachewise._errors import CircuitOpenError
from cachewise.backends._breaker._async import AsyncCircuitBreaker
from cachewise.backends._breaker._sync import CircuitBreaker

__all__ = ["AsyncCircuitBreaker", "CircuitBreaker", "CircuitOpenError"]
