"""Key helpers: templates such as ``"user:{user_id}:profile"`` and stable keys built
from a function's arguments.

A stable key is the same in every process and every run: it is built from the
function's qualified name and a canonical encoding of its bound arguments (defaults
applied), never from ``repr`` or ``hash``, which may differ between processes.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import string
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = [
    "MAX_KEY_BYTES",
    "KeyTemplate",
    "check_key_text",
    "encode_arg",
    "function_key",
    "normalize_key",
]

#: Default keys whose argument part is longer than this are hashed (blake2b).
MAX_ARGS_CHARS = 200
#: The longest full key (namespace included) stored as is. Longer keys keep a
#: readable prefix and end in a hash; with the Redis hash-tag braces and helper
#: suffixes, no key name over 250 bytes ever reaches Redis.
MAX_KEY_BYTES = 200
#: Keys of at most this many characters are short enough whatever their encoding
#: (4 bytes per character at most), so the hit path skips the byte count.
SHORT_KEY_CHARS = MAX_KEY_BYTES // 4
_HASH_BYTES = 16
_KEEP_BYTES = MAX_KEY_BYTES - 2 * _HASH_BYTES - 1


def check_key_text(key: str) -> str:
    """Reject keys with whitespace or control characters (``ValueError``).

    They are rejected rather than escaped: an escaped key would no longer read as
    what the code wrote, and ``"a b"`` and ``"a_b"`` must not meet by accident.
    """
    if not key.isprintable() or " " in key:
        bad = next(ch for ch in key if not ch.isprintable() or ch == " ")
        raise ValueError(
            f"cache keys may not contain whitespace or control characters; "
            f"{key[:60]!r} contains {bad!r}"
        )
    return key


def normalize_key(key: str) -> str:
    """``key`` itself when it fits ``MAX_KEY_BYTES``, else a readable prefix of it
    followed by ``#`` and its blake2b digest (same input, same output, anywhere)."""
    if len(key) <= SHORT_KEY_CHARS:
        return key
    raw = key.encode()
    if len(raw) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.blake2b(raw, digest_size=_HASH_BYTES).hexdigest()
    prefix = raw[:_KEEP_BYTES].decode(errors="ignore")  # never cut a character in two
    return f"{prefix}#{digest}"


_formatter = string.Formatter()


class KeyTemplate:
    """A key template: ``str.format`` syntax over named values.

    >>> KeyTemplate("user:{user_id}:profile").format({"user_id": 7})
    'user:7:profile'
    """

    __slots__ = ("fields", "template")

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise TypeError(f"a key template must be a str, not {type(template).__name__}")
        try:
            parsed = list(_formatter.parse(template))
        except ValueError as exc:
            raise ValueError(f"invalid key template {template!r}: {exc}") from None
        roots: list[str] = []
        for _, field, _, _ in parsed:
            if field is None:
                continue
            # "user.id" and "ids[0]" are rooted at "user" and "ids".
            root = field.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ValueError(
                    f"key template {template!r} needs named fields such as {{user_id}}, "
                    f"not {{{field}}}"
                )
            roots.append(root)
        self.template = template
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(roots))

    def check_names(self, names: Collection[str], owner: str) -> None:
        """Raise ``ValueError`` if a field is not one of ``names`` (``owner`` is for the
        message, e.g. the decorated function's name)."""
        unknown = [field for field in self.fields if field not in names]
        if unknown:
            raise ValueError(
                f"key template {self.template!r} uses {', '.join(unknown)}, "
                f"which {owner} does not take; its parameters are: {', '.join(names)}"
            )

    def format(self, values: Mapping[str, Any]) -> str:
        """Fill the template from ``values``."""
        try:
            return self.template.format_map(values)
        except (KeyError, AttributeError, IndexError) as exc:
            raise ValueError(f"cannot fill key template {self.template!r}: {exc!r}") from None

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def encode_arg(value: Any) -> str:
    """Encode one argument canonically: equal values give equal strings in every
    process. Supports None, bool, int, float, str, bytes, and lists, tuples, sets,
    frozensets and dicts of those; any object with a ``__cache_key__()`` method that
    returns a str. Anything else is a ``TypeError``: its ``repr`` may hold a memory
    address, and a key that differs per process is a silent miss.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        # 1.0 and 1 compare equal and hash equal, so they share a key.
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (bytes, bytearray)):
        return "b" + _quote(bytes(value).hex())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_arg(item) for item in value) + "]"
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(encode_arg(item) for item in value)) + "}"
    if isinstance(value, dict):
        items = sorted((encode_arg(k), encode_arg(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    hook = getattr(value, "__cache_key__", None)
    if callable(hook):
        result = hook()
        if not isinstance(result, str):
            raise TypeError(f"{type(value).__name__}.__cache_key__() must return a str")
        return _quote(result)
    raise TypeError(f"cannot build a stable cache key from a {type(value).__name__}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, the prefix of its default keys."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "?")
    # Functions built in a factory read as factory.name, not factory.<locals>.name.
    return f"{module}.{qualname}".replace(".<locals>.", ".")


def function_key(name: str, bound: inspect.BoundArguments) -> str:
    """The default key for a call: ``name(arg=value,...)``, hashed when long.

    ``bound`` must have its defaults applied, so that ``f(1)`` and ``f(user_id=1)``
    give the same key.
    """
    parts: list[str] = []
    for param_name, value in bound.arguments.items():
        try:
            parts.append(f"{param_name}={encode_arg(value)}")
        except TypeError as exc:
            raise TypeError(
                f"{exc} (argument {param_name!r} of {name}); pass key='...' with a "
                f"template, or give the type a __cache_key__() method"
            ) from None
    args = ",".join(parts)
    if len(args) > MAX_ARGS_CHARS:
        args = "#" + hashlib.blake2b(args.encode(), digest_size=16).hexdigest()
    return f"{name}({args})"
