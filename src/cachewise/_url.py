"""``from_url``: turn a URL into a backend. Each scheme lists the query options it
takes; anything else is a ``ValueError`` naming it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend

SCHEMES = ("memory",)


def _parse(url: str) -> tuple[str, str, dict[str, str]]:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise ValueError(f"invalid cache URL {url!r}: expected scheme://..., e.g. memory://")
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown cache URL scheme {scheme!r} in {url!r}; supported: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"invalid query string in cache URL {url!r}") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ValueError(f"query option {name!r} given twice in {url!r}")
        query[name] = value
    return scheme, parts.netloc + parts.path, query


def _int_option(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"query option {name} must be an integer, got {raw!r}") from None


def memory_backend_from_url(url: str) -> MemoryBackend:
    """``memory://`` with optional ``max_entries`` and ``max_bytes``."""
    _, location, query = _parse(url)
    if location not in ("", "/"):
        raise ValueError(f"memory:// URLs take no host or path, got {url!r}")
    for name in query:
        if name not in ("max_entries", "max_bytes"):
            raise ValueError(
                f"unknown query option {name!r} for memory://; supported: max_entries, max_bytes"
            )
    return MemoryBackend(
        max_entries=_int_option("max_entries", query.get("max_entries", str(DEFAULT_MAX_ENTRIES))),
        max_bytes=_int_option("max_bytes", query.get("max_bytes", str(DEFAULT_MAX_BYTES))),
    )


def backend_from_url(url: str) -> MemoryBackend:
    """The backend a URL names (only ``memory://`` so far)."""
    scheme, _, _ = _parse(url)
    if scheme == "memory":
        return memory_backend_from_url(url)
    raise AssertionError(scheme)  # pragma: no cover - _parse rejects other schemes
