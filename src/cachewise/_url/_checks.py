"""``client_options`` and ``sentinel_options`` checked against the redis-py classes
a flavour builds, before any client is: a name redis-py's connection class does
not take (or a cluster client would not pass on) and a value of the wrong kind
are errors at ``from_url``. redis-py would only raise once a connection is made
(every call a backend failure from then on), and a cluster client would silently
drop what it does not pass on. (What needs no redis-py, such as names cachewise
sets itself and credentials the URL gives already, is checked when parsing.)"""

from __future__ import annotations

import importlib
import inspect
import math
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cachewise._url._options import RedisOptions, Target

Flavour = Literal["sync", "async"]

#: Options of Redis Cluster's clients (sync and asyncio alike) that are not
#: connection options, with the kind of value each takes (see _option_kind). Any
#: other name a cluster URL takes is a connection option its clients pass on.
_CLUSTER_OPTIONS = {
    "require_full_coverage": "bool",
    "reinitialize_steps": "number",
    "dynamic_startup_nodes": "bool",
    "address_remap": "callable",
}

#: Options that take a mapping, where redis-py's signatures do not say so.
_MAPPING_OPTIONS = ("socket_keepalive_options",)

_NAMED_PARAMETERS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def redis_module(name: str) -> Any:
    """A redis-py module, or an ``ImportError`` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError("Redis URLs need redis-py: pip install 'cachewise[redis]'") from None


def check_client_options(options: RedisOptions, flavour: Flavour) -> None:
    """Both option dicts of ``options`` checked for a ``flavour`` backend. The
    Sentinels are always reached the sync way (the async backend asks them through
    the sync classes' options too)."""
    _check(options.target, options.client_options, flavour, "client_options")
    _check(options.target, options.sentinel_options, "sync", "sentinel_options")


def _check(target: Target, options: Mapping[str, Any], flavour: Flavour, name: str) -> None:
    if not options:
        return
    modules = (
        ["redis.connection"]
        if flavour == "sync"
        else ["redis.connection", "redis.asyncio.connection"]
    )
    classes = []
    for module_name in modules:
        module = redis_module(module_name)
        classes.append(
            module.UnixDomainSocketConnection
            if target.kind == "unix"
            else module.SSLConnection
            if target.tls
            else module.Connection
        )
    cluster = target.kind == "cluster" and name == "client_options"
    for option, value in options.items():
        if cluster and option in _CLUSTER_OPTIONS:
            _check_value(name, option, value, _CLUSTER_OPTIONS[option])
            continue
        if cluster:
            _check_cluster_passes_on(option, flavour)
        # Before the connection is built: redis-py checks few values there.
        _check_value(name, option, value, _option_kind(option, classes))
        for connection_class in classes:
            try:
                connection_class(**{option: value})  # built, never connected
            except TypeError as exc:
                if "unexpected keyword" not in str(exc):
                    raise TypeError(f"{name}[{option!r}]: {exc}") from None
                hint = " (TLS options need a rediss:// URL)" if option.startswith("ssl") else ""
                raise TypeError(
                    f"{name}: redis-py's {connection_class.__name__} takes no option "
                    f"{option!r}{hint}"
                ) from None


def _check_cluster_passes_on(option: str, flavour: Flavour) -> None:
    """Refuse a connection option a Redis Cluster client would drop (the sync one
    keeps a list of what it passes on to its connections) or refuse (the asyncio
    one takes a fixed set of keywords)."""
    sync_allowed = getattr(redis_module("redis.cluster"), "REDIS_ALLOWED_KEYS", None)
    if sync_allowed is not None and option not in sync_allowed:
        raise TypeError(
            f"client_options: redis-py's RedisCluster does not pass option {option!r} "
            "on to its connections"
        )
    if flavour == "async":
        init = redis_module("redis.asyncio.cluster").RedisCluster.__init__
        if option not in inspect.signature(init).parameters:
            raise TypeError(
                f"client_options: redis-py's asyncio RedisCluster takes no option {option!r}"
            )


def _option_kind(option: str, classes: Sequence[Any]) -> str | None:
    """What a redis-py option takes, from the signatures of ``classes`` (and their
    bases): ``"bool"`` where the default is a bool, ``"number"`` where it is a
    number, ``"mapping"`` and ``"callable"`` where the annotation says so; None
    when they do not tell."""
    if option in _MAPPING_OPTIONS:
        return "mapping"
    for cls in classes:
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None:
                continue
            try:
                parameter = inspect.signature(init).parameters.get(option)
            except (TypeError, ValueError):  # pragma: no cover - a C signature
                continue
            if parameter is None or parameter.kind not in _NAMED_PARAMETERS:
                continue
            default, annotation = parameter.default, str(parameter.annotation)
            if isinstance(default, bool):
                return "bool"
            if isinstance(default, (int, float)):
                return "number"
            if "Mapping" in annotation:
                return "mapping"
            if "Callable" in annotation:
                return "callable"
    return None


def _check_value(name: str, option: str, value: object, kind: str | None) -> None:
    """``value`` is of the ``kind`` ``option`` takes (see ``_option_kind``)."""
    label = f"{name}[{option!r}]"
    if kind == "bool" and not isinstance(value, bool):
        raise TypeError(f"{label} must be a bool, not {type(value).__name__}")
    if kind == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{label} must be a number, not {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if kind == "callable" and value is not None and not callable(value):
        raise TypeError(f"{label} must be callable, not {type(value).__name__}")
    if option == "client_name" and value is not None:
        # CLIENT SETNAME refuses spaces and unprintable characters: every
        # connection would fail to open.
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a str, not {type(value).__name__}")
        if not value.isprintable() or " " in value:
            raise ValueError(f"{label} may not contain spaces or control characters")
    if option == "socket_type" and value not in (0, socket.SOCK_STREAM):
        raise ValueError(f"{label} must be 0 or socket.SOCK_STREAM, got {value!r}")
    if kind == "mapping" and value is not None:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must be a dict, not {type(value).__name__}")
        if option == "socket_keepalive_options":  # setsockopt(level, int, int | bytes)
            for key, item in value.items():
                if not isinstance(key, int) or isinstance(key, bool):
                    raise TypeError(f"{label} keys must be socket option numbers, got {key!r}")
                if not isinstance(item, (int, bytes)) or isinstance(item, bool):
                    raise TypeError(f"{label} values must be ints or bytes, got {item!r}")
