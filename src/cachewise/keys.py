"""Key helpers: templates such as ``"user:{user_id}:profile"`` and stable keys built
from a function's arguments.

A stable key is the same in every process and every run: it is built from the
function's qualified name and a canonical encoding of its bound arguments (defaults
applied), never from ``repr`` or ``hash``, which may differ between processes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import gc
import hashlib
import inspect
import logging
import math
import pathlib
import re
import string
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from types import CodeType
from typing import Any

__all__ = [
    "FRAMEWORK_TYPES",
    "MAX_KEY_BYTES",
    "ArgFilter",
    "KeyTemplate",
    "check_key",
    "check_key_text",
    "check_namespace",
    "check_version",
    "default_key_name",
    "encode_arg",
    "function_key",
    "normalize_key",
    "quote",
    "unquote",
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
#: Between a long key's kept prefix and its digest: contains a space, which no
#: valid key does (see normalize_key).
HASH_MARK = " #"
_KEEP_BYTES = MAX_KEY_BYTES - 2 * _HASH_BYTES - len(HASH_MARK)
#: The longest namespace-and-version prefix: shorter than what normalize_key
#: keeps of a long key, so every stored name of a cache starts with its prefix
#: (and clear() finds them all).
MAX_PREFIX_BYTES = 100


def check_key_text(key: str) -> str:
    """Reject keys with whitespace or control characters (``ValueError``).

    They are rejected rather than escaped: an escaped key would no longer read as
    what the code wrote, and ``"a b"`` and ``"a_b"`` must not meet by accident.
    """
    if not key.isprintable() or " " in key:
        bad = next(ch for ch in key if not ch.isprintable() or ch == " ")
        raise ValueError(
            f"cache keys may not contain whitespace or control characters; "
            f"{key[:60]!r} contains {bad!r}: escape free text with "
            "cachewise.keys.quote(text), the encoding key templates use, or use a "
            "key template (@cache.cached('search:{q}'))"
        )
    return key


#: What ``quote`` always escapes besides whitespace and control characters: the
#: escape character itself, and the namespace separator, so that a value's
#: colons never read as a template's.
_ALWAYS_ESCAPED = frozenset("% :")


def quote(text: str, also: str | frozenset[str] = "") -> str:
    """``text`` made safe for a cache key, reversibly (``unquote``) and the same
    in every process and version: percent-encoding (``%XX`` for each UTF-8 byte)
    of ``%``, ``:``, whitespace, control and other unprintable characters, and of
    every character in ``also``; everything else (letters in any script, digits,
    ``/``, ``.``, ``@``, braces...) is kept. ``quote("red shoes")`` is
    ``"red%20shoes"``.

    Key templates fill every field this way, with ``also`` the punctuation of the
    template's own text (``"{a}/{b}"`` escapes ``/`` in ``a`` and ``b``), so two
    different calls never fill a template to one key.
    """
    if (
        text.isprintable()
        and _ALWAYS_ESCAPED.isdisjoint(text)
        and (not also or frozenset(also).isdisjoint(text))
    ):
        return text
    return _quote_slow(text, frozenset(also) | _ALWAYS_ESCAPED)


def _quote_slow(text: str, escaped: frozenset[str]) -> str:
    out: list[str] = []
    for ch in text:
        if ch in escaped or not ch.isprintable():
            # (surrogatepass: a lone surrogate is escaped too, not an error)
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def unquote(text: str) -> str:
    """The text ``quote`` was given."""
    if "%" not in text:
        return text
    raw = bytearray()
    parts = text.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        raw += bytes.fromhex(part[:2])
        if len(part) > 2:
            out.append(bytes(raw).decode("utf-8", "surrogatepass"))
            raw.clear()
            out.append(part[2:])
    if raw:
        out.append(bytes(raw).decode("utf-8", "surrogatepass"))
    return "".join(out)


#: What separates a namespace (and its version) from the key. A namespace may not
#: contain it, so the first one in a full key marks where the namespace ends and no
#: two (namespace, key) pairs can name one entry.
NAMESPACE_SEPARATOR = ":"
#: What marks a version inside the namespace segment (``shop@v3:price``). A
#: namespace may not contain it either, so an unversioned ``shop`` key ``v3:price``
#: (``shop:v3:price``) never meets version 3's ``price`` (``shop@v3:price``).
VERSION_MARKER = "@v"


def check_namespace(namespace: object) -> str:
    """Validate a namespace: a str without whitespace, control characters, ``:``
    or ``@`` (``""`` is the raw keyspace, shared by every cache)."""
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    if not namespace:
        return namespace
    check_key_text(namespace)
    for reserved in (NAMESPACE_SEPARATOR, "@"):
        if reserved in namespace:
            raise ValueError(
                f"namespace {namespace!r} contains {reserved!r}, which separates the "
                "namespace (and its version) from the key; use '.' or '/' to nest "
                "namespaces, e.g. 'app.users'"
            )
    return namespace


def check_version(version: object) -> str | None:
    """Validate a cache version (an int or a str without whitespace, control
    characters or ``:``); its text, or ``None`` for an unversioned cache."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise TypeError("version must be an int or a str")
    text = str(version)
    if not text:
        raise ValueError("version must be a non-empty str or an int")
    check_key_text(text)
    if NAMESPACE_SEPARATOR in text:
        raise ValueError(f"version {text!r} may not contain {NAMESPACE_SEPARATOR!r}")
    return text


def key_prefix(namespace: str, version: str | None) -> str:
    """What a cache puts before every key and tag: ``"ns:"``, ``"ns@v3:"``,
    ``"@v3:"`` (no namespace, versioned) or ``""`` (the raw keyspace).

    Unambiguous: a namespace contains neither ``:`` nor ``@``, so the text up to
    the first ``:`` of a full key is the namespace and version that wrote it. Only
    the empty, unversioned namespace is raw: its keys may be anything, including
    another namespace's full keys (and its ``clear()`` empties everything).
    """
    segment = namespace + (f"{VERSION_MARKER}{version}" if version is not None else "")
    prefix = segment + NAMESPACE_SEPARATOR if segment else ""
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise ValueError(
            f"namespace and version together may be at most {MAX_PREFIX_BYTES - 1} bytes, "
            f"got {len(prefix.encode()) - 1}"
        )
    return prefix


def check_key(key: object) -> str:
    """A cache key must be a non-empty str (a str subclass becomes a plain str)
    without whitespace or control characters."""
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, not {type(key).__name__}")
    text = str.__str__(key)
    if not text:
        raise ValueError("cache keys must be non-empty strings")
    return check_key_text(text)


def normalize_key(key: str) -> str:
    """``key`` itself when it fits ``MAX_KEY_BYTES``, else a readable prefix of it
    followed by `` #`` and its blake2b digest (same input, same output, anywhere).

    The space is what keeps the two kinds apart: no valid key contains whitespace,
    so no short key can be spelled like a long key's hashed name and share (or
    poison) its entry."""
    if len(key) <= SHORT_KEY_CHARS:
        return key
    raw = key.encode()
    if len(raw) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.blake2b(raw, digest_size=_HASH_BYTES).hexdigest()
    prefix = raw[:_KEEP_BYTES].decode(errors="ignore")  # never cut a character in two
    return f"{prefix}{HASH_MARK}{digest}"


_formatter = string.Formatter()
_EMPTY_FILLING = "%"
_NO_VALUE: Any = object()


class KeyTemplate:
    """A key template: ``str.format`` syntax over named values.

    >>> KeyTemplate("user:{user_id}:profile").format({"user_id": 7})
    'user:7:profile'
    """

    __slots__ = ("_escaped", "_positional", "_prefix", "_simple", "_suffix", "fields", "template")

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise TypeError(f"a key template must be a str, not {type(template).__name__}")
        try:
            parsed = list(_formatter.parse(template))
        except ValueError as exc:
            raise ValueError(f"invalid key template {template!r}: {exc}") from None
        roots: list[str] = []
        simple = True
        # Text since the previous field: two fields with no punctuation between
        # them ("{first}{last}", "item{shop}x{sku}") can split one key two ways.
        between: str | None = None
        for literal, field, spec, conversion in parsed:
            if between is not None:
                between += literal
            if field is None:
                continue
            if between is not None and all(ch.isalnum() for ch in between):
                raise ValueError(
                    f"key template {template!r} puts {{{field}}} right after another field "
                    f"with {'nothing' if not between else repr(between)} between them: two "
                    "different calls could fill it to one key; separate the fields with "
                    "punctuation, e.g. ':'"
                )
            between = ""
            if spec or conversion or not field.isidentifier():
                simple = False
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
        # Each field's text is quoted, escaping the template's own punctuation too:
        # "{a}:{b}" with a="x:y" must not fill to the key of a="x", b="y:...".
        self._escaped = (
            frozenset(ch for literal, _, _, _ in parsed for ch in literal if not ch.isalnum())
            | _ALWAYS_ESCAPED
        )
        self._simple = simple  # plain {name} fields only: the fast path
        # The template with its fields numbered in order of first use: filled
        # positionally on the fast path. ("{{" and "}}" stay escaped.)
        if simple:
            order = {name: index for index, name in enumerate(self.fields)}
            self._positional = "".join(
                literal.replace("{", "{{").replace("}", "}}")
                + ("" if field is None else "{" + str(order[field]) + "}")
                for literal, field, _, _ in parsed
            )
        else:
            self._positional = ""
        # One plain field used once ("user:{user_id}"): filled by concatenation.
        occurrences = [field for _, field, _, _ in parsed if field is not None]
        self._prefix: str | None = None
        self._suffix = ""
        if simple and len(occurrences) == 1:
            at = next(i for i, part in enumerate(parsed) if part[1] is not None)
            self._prefix = "".join(literal for literal, _, _, _ in parsed[: at + 1])
            self._suffix = "".join(literal for literal, _, _, _ in parsed[at + 1 :])

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
        """Fill the template from ``values``: each field's text (``format(value,
        spec)``, as ``str.format`` would write it) goes through ``quote``, so free
        text, colons and braces all make valid, distinct keys."""
        escaped = self._escaped
        prefix = self._prefix
        if prefix is not None:
            # The decorated hit path's usual case: one field, an int or a str that
            # needs no quoting (the general path below gives the same text).
            value = values.get(self.fields[0], _NO_VALUE)
            kind = value.__class__
            if kind is int and value.bit_length() <= _INT_DECIMAL_BITS:
                return prefix + int.__repr__(value) + self._suffix
            if kind is str and value and value.isprintable() and escaped.isdisjoint(value):
                text: str = value
                return prefix + text + self._suffix
        try:
            if self._simple:
                # The common fields inline (an int, a str that needs no quoting):
                # this is the decorated hit path.
                texts = []
                for name in self.fields:
                    value = values[name]
                    kind = value.__class__
                    if kind is int and value.bit_length() <= _INT_DECIMAL_BITS:
                        texts.append(int.__repr__(value))
                    elif kind is str and value.isprintable() and escaped.isdisjoint(value):
                        texts.append(value)
                    else:
                        texts.append(_field_text(value, escaped))
                key = self._positional.format(*texts)
            else:
                key = _QuotingFormatter(escaped).vformat(self.template, (), values)
        except (KeyError, AttributeError, IndexError) as exc:
            raise ValueError(f"cannot fill key template {self.template!r}: {exc!r}") from None
        # A template of fields alone, filled with empty text ("{slug}" with ""):
        # "%", which quote never writes (it writes "%25"), so no other filling of
        # the template meets it.
        return key or _EMPTY_FILLING

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def _field_text(value: Any, escaped: frozenset[str]) -> str:
    if value.__class__ is int:
        return _int_text(value)
    text = value if value.__class__ is str else _formatted(value, "")
    if text.isprintable() and escaped.isdisjoint(text):
        return text
    return _quote_slow(text, escaped)


#: Ints wider than this are written in hex (``0x...``): decimal text of ints past
#: 4,300 digits is refused by default (and the limit is a per-process setting).
_INT_DECIMAL_BITS = 14_000
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _int_text(value: int) -> str:
    if value.bit_length() <= _INT_DECIMAL_BITS:
        return int.__repr__(value)
    return ("-0x" if value < 0 else "0x") + format(abs(value), "x")


def _holds_set(value: Any, depth: int = 0, dicts: bool = False) -> bool:
    """Whether a value's text may show a set (in containers, dataclass, attrs and
    pydantic fields, instance attributes): its order differs between processes.
    ``dicts``: a dict in a list or tuple counts too (its order is its insertion's)."""
    if isinstance(value, (set, frozenset)) or (dicts and isinstance(value, dict)):
        return True
    if depth > 20 or isinstance(value, (str, bytes, int, float, type)):
        return False
    if isinstance(value, (list, tuple)):
        return any(_holds_set(item, depth + 1, dicts) for item in value)
    if isinstance(value, dict):
        return any(_holds_set(item, depth + 1) for item in (*value.keys(), *value.values()))
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        return any(_holds_set(item, depth + 1) for item in attributes.values())
    slots = [
        getattr(value, name, None)
        for cls in type(value).__mro__
        for name in getattr(cls, "__slots__", ())
        if isinstance(name, str)
    ]
    return any(_holds_set(item, depth + 1) for item in slots)


def _formatted(value: Any, spec: str) -> str:
    """A template field's text: ``format(value, spec)``, refused when it would not
    be the same for equal values in every process."""
    if not spec and (
        isinstance(value, dict)
        or (isinstance(value, (set, frozenset, list, tuple)) and _holds_set(value, dicts=True))
    ):
        # Iteration order follows the hash seed (sets) or the insertion order
        # (dicts, which compare equal either way), at any depth: the canonical,
        # sorted form.
        return encode_arg(value)
    if isinstance(value, int) and not spec:
        return _int_text(int(value)) if type(value) is int else format(value, spec)
    if not isinstance(value, (set, frozenset, list, tuple, dict)) and _holds_set(value):
        raise TypeError(
            f"a {type(value).__name__} fills a key template with text that holds a set, "
            "whose order follows the process's hash seed: use one of its attributes"
        )
    text = format(value, spec)
    if _MEMORY_ADDRESS.search(text):
        # The default repr: a memory address, which the next object reuses once
        # this one is freed (one user's entry served to another).
        raise TypeError(
            f"a {type(value).__name__} fills a key template with {text[:60]!r}, which holds "
            "a memory address: use one of its attributes ({user.id}), or give the "
            "class a __str__ that names it"
        )
    return text


class _QuotingFormatter(string.Formatter):
    """``str.format`` with every field's text quoted (specs, conversions,
    ``{user.id}`` and ``{ids[0]}`` as ``str.format`` has them)."""

    def __init__(self, escaped: frozenset[str]) -> None:
        self.escaped = escaped

    def format_field(self, value: Any, format_spec: str) -> str:
        text = _formatted(value, format_spec)
        if text.isprintable() and self.escaped.isdisjoint(text):
            return text
        return _quote_slow(text, self.escaped)


def encode_arg(value: Any) -> str:
    """Encode one argument canonically, for default keys.

    Supports None, bool, int, float, str, bytes and bytearray; lists, tuples, sets,
    frozensets and dicts of those; any object with a ``__cache_key__()`` method
    that returns a str; classes defined at module level (``class:module.Class``, a
    classmethod's ``cls``) and enum members (``enum:module.Class."NAME"``; an int or
    str enum's member is encoded as its plain value). Anything else is a
    ``TypeError``: its ``repr`` may hold a memory address, and a key that differs
    per process is a silent miss.

    Deterministic: equal values give equal strings, in every process (no ``hash``,
    no ``repr`` of arbitrary objects; sets and dicts are sorted by encoding).

    Injective: values that are not equal never share a string, so two different
    calls never share an entry. Each kind has its own form: ``null``, ``true``,
    ``false``, numbers, ``"..."`` (escaped: no whitespace or control characters
    reach the key), ``b"hex"``, ``[...]`` (lists and tuples), ``set{...}`` (sets
    and frozensets), ``{k:v,...}`` (dicts) and ``module.Class("...")`` for a
    ``__cache_key__`` object. Shared on purpose: values Python treats as equal
    (``1`` and ``1.0``, ``-0.0`` and ``0``; a set and a frozenset with equal
    items; bytes and a bytearray with equal content), every NaN, and a list and a
    tuple with equal items: an equal-looking sequence is passed either way, and
    ``f([1])`` and ``f((1,))`` should hit one entry, although ``[1] != (1,)``.
    Kept apart although equal: ``True`` and ``1``. Kept apart: a
    ``__cache_key__`` object and the str it returns, and objects of two classes
    whose ``__cache_key__()`` agree (the class name is part of the string).
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    # The base types' own methods throughout, not the value's: a subclass (an
    # IntEnum, a str subclass) may override __repr__, __int__ or replace(), and its
    # string must still be the one its equal plain value gets.
    if isinstance(value, int):
        if value.bit_length() <= _INT_DECIMAL_BITS:
            return int.__repr__(value)
        return _int_text(int.__int__(value))
    if isinstance(value, float):
        # 1.0 and 1 compare equal and hash equal, so they share a key. float.__repr__
        # round-trips: two different floats never share one.
        if math.isfinite(value) and float.is_integer(value):
            return int.__repr__(int(float.__float__(value)))
        return float.__repr__(value)
    if isinstance(value, str):
        return _quote(str.__str__(value))
    if isinstance(value, (bytes, bytearray)):
        return "b" + _quote(memoryview(value).hex())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_arg(item) for item in value) + "]"
    if isinstance(value, (set, frozenset)):
        # Marked: an empty set must not read as an empty dict ("{}").
        return "set{" + ",".join(sorted(encode_arg(item) for item in value)) + "}"
    if isinstance(value, dict):
        items = sorted((encode_arg(k), encode_arg(v)) for k, v in dict.items(value))
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, type):  # a class (a classmethod's cls): by its name
        return _class_part(value)
    everyday = _everyday_arg(value)
    if everyday is not None:
        return everyday
    hook = getattr(value, "__cache_key__", None)
    if not callable(hook) and isinstance(value, enum.Enum):
        return f"enum:{_class_path(type(value))}.{_quote(value.name)}"
    if callable(hook):
        result = hook()
        if not isinstance(result, str):
            raise TypeError(f"{type(value).__name__}.__cache_key__() must return a str")
        return f"{_class_name(value)}({_quote(str.__str__(result))})"
    raise TypeError(f"cannot build a stable cache key from a {type(value).__name__}")


def _everyday_arg(value: Any) -> str | None:
    """UUIDs, dates, times, durations, Decimals and paths (FastAPI path and query
    parameters): each in a form of its own, equal values alike."""
    kind = type(value)
    if kind is uuid.UUID:
        return f"uuid:{value.hex}"
    if kind is dt.datetime:
        if value.tzinfo is not None and value.utcoffset() is not None:
            # Aware: equal instants are equal, whatever their zones.
            try:
                utc = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            except OverflowError:  # (an instant past year 1 or 9999 in UTC)
                return f"datetime:{_quote(value.isoformat())}"
            return f"datetime:{_quote(utc.isoformat() + 'Z')}"
        return f"datetime:{_quote(value.isoformat())}"
    if kind is dt.date:
        return f"date:{_quote(value.isoformat())}"
    if kind is dt.time:
        return f"time:{_quote(value.isoformat())}"
    if kind is dt.timedelta:
        return f"timedelta:{value.days},{value.seconds},{value.microseconds}"
    if kind is decimal.Decimal:
        if value.is_nan():
            return "decimal:nan"
        if value.is_infinite():
            return "decimal:-inf" if value.is_signed() else "decimal:inf"
        # Equal to an int: its key. Only for modest exponents: int() of
        # Decimal("1e999999999") would run for ever.
        if value.is_finite() and value.adjusted() < 30 and value == value.to_integral_value():
            return _int_text(int(value))
        # Trailing zeros dropped by hand: normalize() follows the context (and
        # overflows past its exponent range).
        sign, digits, exponent = value.as_tuple()
        text = "".join(map(str, digits)).rstrip("0") or "0"
        exponent = int(exponent) + len(digits) - len(text.rstrip("0") or "0")
        if text == "0":
            exponent = 0
        return f"decimal:{'-' if sign else ''}{text}e{exponent}"
    if isinstance(value, pathlib.PurePath):
        return f"path:{_quote(str(value))}"
    return None


def _quote(text: str) -> str:
    """``text`` in double quotes, escaped so that the result is a valid key and
    the quoting can be undone: ``\\`` and ``"`` get a backslash; whitespace and
    control characters (which keys may not hold) become ``\\uXXXX``/``\\UXXXXXXXX``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable() or " " in escaped:
        escaped = "".join(_escape_char(ch) for ch in escaped)
    return '"' + escaped + '"'


def _escape_char(ch: str) -> str:
    # The characters check_key_text refuses, as Python writes them in a literal.
    if ch.isprintable() and ch != " ":
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


# A class name that needs no quoting in an encoded argument: it cannot be mistaken
# for the other forms (it holds a dot, and none of the characters that delimit them).
_PLAIN_CLASS_NAME = re.compile(r"[\w<>]+(?:\.[\w<>]+)+")


def _class_name(value: object) -> str:
    """``module.qualname`` of ``value``'s class, as written in a ``__cache_key__``
    argument's encoding (quoted if it is not made of plain name characters)."""
    # __class__ rather than type(): a lazy proxy (Django's SimpleLazyObject) reports
    # the class of what it wraps, so the proxy and the object share their key.
    cls = value.__class__
    name = f"{getattr(cls, '__module__', None) or '?'}.{cls.__qualname__}"
    return name if _PLAIN_CLASS_NAME.fullmatch(name) else _quote(name)


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, the prefix of its default keys."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "?")
    # Functions built in a factory read as factory.name, not factory.<locals>.name.
    return f"{module}.{qualname}".replace(".<locals>.", ".")


def default_key_name(func: Callable[..., Any]) -> str:
    """The name a function's default keys start with: ``module.qualname``, and
    what tells apart callables that share one (the same in every process):

    - a lambda's line and column (``module.<lambda>@12:8``): every lambda of a
      module has the qualname ``<lambda>``, two may share a line;
    - a closure's captured values (``module.make_getter.get[table="users"]``): each
      function a factory makes has the factory's qualname, and its results depend
      on what it captured. Immutable values are encoded as arguments are (tuples
      and frozensets by their contents), objects by ``__cache_key__()``, captured
      functions by their own names, defaults and captures (recursively), module-
      level classes, enum members, loggers and modules by name, cachewise caches by
      store and namespace, decorated functions (``functools.wraps``, ``lru_cache``,
      cachewise's own) by what they wrap;
    - a bound method's instance (a builtin one's too: ``conn.execute``), and a
      ``functools.partial``'s bound arguments, which must be encodable likewise;
    - a callable object, likewise.

    Refused with ``TypeError`` at decoration, because two functions would share
    entries they must not: a captured list, dict, set or bytearray (its contents
    can change after decoration, and keys must not), an object without
    ``__cache_key__``, a class defined inside a function (each call of the factory
    makes another), and a name the function uses that is not yet bound when it is
    decorated (a helper defined below it). Give such a function a key template.

    Captured names rebound between decoration and the first call (a placeholder
    set afterwards) count as they are at the first call (see ``KeyBuilder``). Two
    live functions whose names agree but whose code differs (defined under an
    ``if`` in a factory, two ``functools.wraps`` wrappers of one function) are
    refused by ``claim_default_name``.
    """
    return default_key_naming(func)[0]


def default_key_naming(func: Callable[..., Any], shared: bool = False) -> tuple[str, str]:
    """``default_key_name`` and a fingerprint of the code it stands for (the
    function's and every captured helper's bytecode, constants and names).
    ``shared``: the entries live in a store other processes share (so a captured
    process-local cache is named by its namespace, the same in every process)."""
    namer = _Namer(shared)
    try:
        name = namer.name(func, frozenset())
    except RecursionError:
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!s} captures functions nested too deeply "
            "to name them in a default key; pass key='...' with a template"
        ) from None
    digest = hashlib.blake2b(digest_size=16)
    for code in namer.codes:
        _digest_code(digest, code)
    return name, digest.hexdigest()


def _digest_code(digest: Any, code: CodeType) -> None:
    # Not marshal: that holds file names and line numbers, which differ between two
    # runs of one cell or one file moved, and are not what the function computes.
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _digest_code(digest, const)
        else:
            digest.update(repr(const).encode())


class _Namer:
    """One naming pass: what it named (memoized, so a helper captured by many
    closures is named once) and the code objects it met."""

    def __init__(self, shared: bool = False) -> None:
        self.memo: dict[tuple[int, bool], str] = {}
        self.codes: list[CodeType] = []
        self.shared = shared

    def name(self, func: Callable[..., Any], seen: frozenset[int], helper: bool = False) -> str:
        # Unwrap what only decorates: a staticmethod/classmethod object's function.
        if isinstance(func, (staticmethod, classmethod)):
            func = func.__func__
        memo_key = (id(func), helper)
        known = self.memo.get(memo_key)
        if known is None:
            known = self.memo[memo_key] = self._name(func, seen, helper)
        return known

    def _name(self, func: Callable[..., Any], seen: frozenset[int], helper: bool) -> str:
        if isinstance(func, functools.partial):
            fixed = [*func.args, *func.keywords.values()]
            reason = next(filter(None, map(_unstable, fixed)), None)
            if reason is not None:
                raise TypeError(
                    f"a functools.partial binds {reason}; its default key would be fixed "
                    "at decoration: pass key='...' with a template"
                )
            try:
                bound = [encode_arg(arg) for arg in func.args]
                bound += [f"{k}={encode_arg(v)}" for k, v in sorted(func.keywords.items())]
            except TypeError as exc:
                raise TypeError(
                    f"{exc}: a functools.partial's bound arguments are part of its default "
                    "key; pass key='...' with a template"
                ) from None
            return f"{self.name(func.func, seen, helper)}[partial({','.join(bound)})]"
        if inspect.ismethod(func):
            owner = func.__self__
            return f"{self.name(func.__func__, seen, helper)}[self={_instance_name(owner)}]"
        if inspect.isbuiltin(func):
            # A builtin bound method (conn.execute, table.get) is named by its class's
            # method: its instance tells two apart. A builtin function's __self__ is
            # its module (or None).
            owner = getattr(func, "__self__", None)
            name = function_name(func)
            if owner is None or inspect.ismodule(owner):
                return name
            if not isinstance(owner, type):
                name = f"{_class_name(owner)}.{func.__name__}"
            return f"{name}[self={_instance_name(owner)}]"
        if isinstance(func, type):
            return _class_part(func)
        if not inspect.isfunction(func):
            wrapped = getattr(func, "__wrapped__", None)
            if callable(wrapped) and _is_pure_wrapper(func):
                # lru_cache, a cachewise CachedFunction: the results are what it wraps.
                # (Any other object is named by its __cache_key__, as callable objects
                # are: a class-based decorator's state is its own.)
                return f"{function_name(type(func))}({self.name(wrapped, seen, helper)})"
            call = type(func).__call__
            return f"{function_name(call)}[self={_instance_name(func)}]"
        name = function_name(func)
        code = func.__code__
        self.codes.append(code)
        if func.__name__ == "<lambda>":
            positions: Any = getattr(code, "co_positions")()  # noqa: B009 - (3.11+; typeshed lacks it)
            columns = [col for _, _, col, _ in positions if col]
            name += f"@{code.co_firstlineno}" + (f":{min(columns)}" if columns else "")
        if id(func) in seen:  # a closure that captures itself (a recursive inner function)
            return name
        seen = seen | {id(func)}
        captured: list[str] = []
        for var, cell in zip(code.co_freevars, func.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: bound later in the enclosing function
                if var == func.__name__:
                    continue  # the function itself, being decorated (recursion)
                raise TypeError(
                    f"{func.__qualname__} uses {var!r}, which is not yet bound when it is "
                    "decorated (defined below it?): its value cannot be part of the "
                    "default key; define it first, or pass key='...' with a template"
                ) from None
            part = self.captured(func, var, value, seen)
            if part is not None:
                captured.append(f"{var}={part}")
        # A captured helper's defaults shape its results as much as its captures do
        # (``def lookup(key, _table=table)``). The decorated function's own defaults
        # are applied to each call's arguments instead (see function_key), unless it
        # is a functools.wraps wrapper: its call signature is the wrapped function's,
        # and its own defaults (``_fn=fn``) would be left out.
        if helper or getattr(func, "__wrapped__", None) is not None:
            for index, value in enumerate(func.__defaults__ or ()):
                part = self.captured(func, f"default {index}", value, seen)
                captured.append(f"*{index}={part}")
            for var, value in sorted((func.__kwdefaults__ or {}).items()):
                part = self.captured(func, var, value, seen)
                captured.append(f"*{var}={part}")
        if captured:
            text = ",".join(captured)
            if len(text) > MAX_ARGS_CHARS:
                text = "#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
            name += f"[{text}]"
        return name

    def captured(self, func: object, var: str, value: object, seen: frozenset[int]) -> str | None:
        """How a closure's captured ``value`` enters its default key name, or
        TypeError when it cannot be told apart from another value."""
        from cachewise._frontends._base import CacheBase  # keys is imported by them

        if isinstance(value, CacheBase):
            # Two caches name the same entries when they share a store and a
            # namespace (and version): a server's identity, or this process's
            # memory store (the entries live only here anyway).
            return f"cache:{_quote(_store_name(value, self.shared) + '/' + value._prefix)}"
        if inspect.ismodule(value):
            return f"module:{value.__name__}"
        if isinstance(value, type):
            return _class_part(value)
        if isinstance(value, logging.Logger):  # one per name in a process
            return f"logger:{_quote(value.name)}"
        if isinstance(value, (staticmethod, classmethod)) or (
            callable(value)
            and (
                inspect.isfunction(value)
                or inspect.isbuiltin(value)
                or inspect.ismethod(value)
                or isinstance(value, functools.partial)
                or callable(getattr(value, "__wrapped__", None))
            )
        ):
            # A decorator factory's wrapped function: the wrapper's results are its.
            return f"fn:{self.name(value, seen, helper=True)}"  # type: ignore[arg-type]
        reason = _unstable(value)
        if reason is None:
            try:
                return encode_arg(value)
            except TypeError:
                reason = f"a {type(value).__name__} without __cache_key__()"
            except RecursionError:
                reason = "a value nested too deeply"
        qualname = getattr(func, "__qualname__", "?")
        raise TypeError(
            f"{qualname} captures {var!r} ({reason}): functions made by one factory would "
            "share their default keys; pass key='...' with a template, or give the captured "
            "type a __cache_key__() method"
        )


# Process-wide on purpose: a default key name is derived from code (module and
# qualified name), and code is process-wide; two caches on one store must agree.
# Default key names in use by live functions: name -> (code fingerprint, how many
# live functions use it). Counted, not a WeakSet: an entry must go the moment its
# last function does (a WeakSet still counts a function while its finalizer runs).
_claimed: dict[str, tuple[str, int]] = {}
_claimed_lock = threading.Lock()


def claim_default_name(name: str, fingerprint: str, owner: object) -> Callable[[], Any]:
    """Record that ``owner`` (a decorated function) uses the default key name
    ``name`` for code with ``fingerprint``, until ``owner`` is collected or the
    returned function is called (a rename); ``TypeError`` when other live
    functions already use it for different code (two definitions of one name
    under an ``if`` in a factory, two ``functools.wraps`` wrappers of one
    function): they would read each other's entries. The same code decorated
    again (a second cache, a factory called twice) is fine."""
    for attempt in (1, 2):
        with _claimed_lock:
            held = _claimed.get(name)
            if held is None or held[0] == fingerprint:
                _claimed[name] = (fingerprint, (held[1] if held else 0) + 1)
                return weakref.finalize(owner, _unclaim, name, fingerprint)
        if attempt == 1:
            gc.collect()  # the others may be garbage not yet collected (a cycle)
    raise TypeError(
        f"two different functions would share the default key name {name!r} (same "
        "name and captures, different code: defined under an if, or two wrappers of "
        "one function); they would read each other's entries: pass key='...' with a "
        "template to one of them"
    )


def _unclaim(name: str, fingerprint: str) -> None:
    with _claimed_lock:
        held = _claimed.get(name)
        if held is None or held[0] != fingerprint:
            return
        if held[1] <= 1:
            del _claimed[name]
        else:
            _claimed[name] = (fingerprint, held[1] - 1)


def _store_name(cache: Any, shared: bool) -> str:
    """A cache's store, for a default key that captures the cache: a Redis
    server's identity; a process-local store by its identity in this process, or
    (when the key goes to a shared store, where every process must spell it
    alike) just "local": two local caches captured there need two namespaces."""
    scope = getattr(cache, "_scope", None)
    if isinstance(scope, str):
        return scope
    if shared:
        return "local"
    return f"local@{id(scope if scope is not None else cache.backend):x}"


def _is_pure_wrapper(func: object) -> bool:
    """A wrapper whose results are exactly its wrapped function's (memoized):
    ``functools.lru_cache``/``cache`` and cachewise's own decorated functions."""
    if isinstance(func, functools._lru_cache_wrapper):
        return True
    module = type(func).__module__ or ""
    return module.startswith("cachewise.")


#: Containers whose contents can change after decoration: a key taken from them
#: then would be wrong (two factories' functions over tables filled later share it).
_MUTABLE = (list, dict, set, bytearray)


def _unstable(value: object, depth: int = 0) -> str | None:
    """Why ``value`` cannot stand for itself in a key fixed at decoration (None: it can)."""
    if isinstance(value, _MUTABLE):
        return f"a {type(value).__name__}, whose contents can change after decoration"
    if isinstance(value, (tuple, frozenset)):
        if depth > 50:
            return "a value nested too deeply"
        for item in value:
            reason = _unstable(item, depth + 1)
            if reason is not None:
                return reason
    return None


def _class_path(cls: type) -> str:
    """``module.qualname`` of a class that has one name per process (``TypeError``
    for a class defined inside a function: every call makes another)."""
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{cls.__qualname__} is a class defined inside a function: every call of "
            "that function makes another class with the same name, so its name cannot "
            "stand for it in a default key; pass key='...' with a template"
        )
    return f"{cls.__module__}.{cls.__qualname__}"


def _class_part(cls: type) -> str:
    """A class in a key: ``class:module.qualname``."""
    return f"class:{_class_path(cls)}"


def _instance_name(owner: object) -> str:
    """What names the instance a method is bound to, in a default key."""
    if isinstance(owner, type):  # a classmethod: the class is the name
        return _class_path(owner)
    reason = _unstable(owner)
    if reason is not None:
        raise TypeError(
            f"a default key for a method of {reason} would be fixed at decoration; "
            "pass key='...' with a template"
        )
    try:
        return encode_arg(owner)
    except (TypeError, RecursionError):
        raise TypeError(
            f"a default key for a method of a {type(owner).__name__} instance needs the "
            f"instance in it (two instances would share every entry): give "
            f"{type(owner).__name__} a __cache_key__() method, or pass key='...'"
        ) from None


#: Classes whose instances are never data, by ``module.qualname`` (checked over
#: the value's class and its bases, without importing any of these packages): a
#: parameter holding one is left out of default keys. Sessions, connections and
#: cursors reach the data; requests and background tasks carry the call.
FRAMEWORK_TYPES = frozenset(
    {
        # Starlette / FastAPI (Request and WebSocket are HTTPConnections)
        "starlette.requests.HTTPConnection",
        "starlette.responses.Response",
        "starlette.background.BackgroundTask",
        "starlette.background.BackgroundTasks",
        # SQLAlchemy
        "sqlalchemy.orm.session.Session",
        "sqlalchemy.orm.scoping.scoped_session",
        "sqlalchemy.ext.asyncio.session.AsyncSession",
        "sqlalchemy.ext.asyncio.scoping.async_scoped_session",
        "sqlalchemy.engine.base.Connection",
        "sqlalchemy.engine.base.Engine",
        "sqlalchemy.ext.asyncio.engine.AsyncConnection",
        "sqlalchemy.ext.asyncio.engine.AsyncEngine",
        # Django, Flask
        "django.http.request.HttpRequest",
        "django.db.backends.base.base.BaseDatabaseWrapper",
        "werkzeug.sansio.request.Request",
        # DB-API drivers
        "sqlite3.Connection",
        "sqlite3.Cursor",
        "psycopg.connection.BaseConnection",
        "psycopg._connection_base.BaseConnection",
        "psycopg.cursor.BaseCursor",
        "psycopg._cursor_base.BaseCursor",
        "psycopg2.extensions.connection",
        "psycopg2.extensions.cursor",
        "asyncpg.connection.Connection",
        "asyncpg.pool.Pool",
        "aiosqlite.core.Connection",
        "aiosqlite.cursor.Cursor",
        # Clients
        "redis.client.Redis",
        "redis.asyncio.client.Redis",
        "redis.cluster.RedisCluster",
        "redis.asyncio.cluster.RedisCluster",
        "django.utils.connection.ConnectionProxy",
        "django.db.backends.utils.CursorWrapper",
        "logging.LoggerAdapter",
        "httpx.Client",
        "httpx.AsyncClient",
        "aiohttp.client.ClientSession",
        "requests.sessions.Session",
        "logging.Logger",
    }
)


def is_framework_type(cls: type) -> bool:
    """Whether instances of ``cls`` are left out of default keys by default (see
    ``FRAMEWORK_TYPES``)."""
    return any(
        f"{getattr(base, '__module__', '')}.{base.__qualname__}" in FRAMEWORK_TYPES
        for base in getattr(cls, "__mro__", ())
    )


#: Argument types left out only when ``ignore=`` names them (the filter's lookup
#: is skipped for them on the hit path otherwise).
_PLAIN_ARGS: frozenset[type] = frozenset(
    {int, str, float, bool, type(None), bytes, tuple, list, dict}
)


class ArgFilter:
    """Which arguments a default key leaves out: parameters named in ``ignore``,
    values of a type in ``ignore`` (or a subclass), and values of the framework
    types that never are data (``FRAMEWORK_TYPES``: sessions, connections,
    requests, background tasks). The rule looks at each call's values, so it
    holds whether or not the parameter is annotated, and a parameter that
    receives data in one call and a session in another is keyed on the data."""

    __slots__ = ("_lock", "_memo", "names", "plain", "types")

    _MEMO_MAX = 1024

    def __init__(self, ignore: Iterable[str | type] = (), params: Collection[str] = ()) -> None:
        if isinstance(ignore, (str, type)):
            ignore = (ignore,)
        names: set[str] = set()
        types: list[type] = []
        for item in ignore:
            if isinstance(item, str):
                if params and item not in params:
                    raise ValueError(
                        f"ignore names {item!r}, which is not a parameter; the parameters "
                        f"are: {', '.join(params)}"
                    )
                names.add(item)
            elif isinstance(item, type):
                types.append(item)
            else:
                raise TypeError(
                    f"ignore takes parameter names and types, not {type(item).__name__}"
                )
        self.names = frozenset(names)
        self.types = tuple(types)
        # The plain argument types no ignored type covers: the key skips the
        # filter's lookup for them.
        self.plain = frozenset(
            plain for plain in _PLAIN_ARGS if not (types and issubclass(plain, self.types))
        )
        self._memo: dict[type, bool] = {}
        self._lock = threading.Lock()

    def skips(self, name: str, value: object) -> bool:
        """Whether the argument ``name=value`` stays out of the key."""
        return name in self.names or self.skips_value(value)

    def skips_value(self, value: object) -> bool:
        """Whether ``value``'s type keeps it out of keys."""
        cls = value.__class__
        known = self._memo.get(cls)
        if known is None:
            known = (bool(self.types) and issubclass(cls, self.types)) or is_framework_type(cls)
            with self._lock:
                if len(self._memo) < self._MEMO_MAX:  # (bounded: made-up classes)
                    self._memo[cls] = known
        return known


_NO_FILTER = ArgFilter()


def function_key(
    name: str, bound: inspect.BoundArguments, arg_filter: ArgFilter = _NO_FILTER
) -> str:
    """The default key for a call: ``name(arg=value,...)``, hashed when long;
    arguments ``arg_filter`` skips are left out.

    ``bound`` must have its defaults applied, so that ``f(1)`` and ``f(user_id=1)``
    give the same key.
    """
    parts: list[str] = []
    names = arg_filter.names
    plain = arg_filter.plain
    for param_name, value in bound.arguments.items():
        if value.__class__ not in plain and arg_filter.skips_value(value):
            continue
        if names and param_name in names:
            continue
        try:
            parts.append(f"{param_name}={encode_arg(value)}")
        except RecursionError:  # a list that holds itself, or nested thousands deep
            raise TypeError(
                f"argument {param_name!r} of {name} is nested too deeply (or holds "
                "itself) to be part of a default key; pass key='...' with a template"
            ) from None
        except TypeError as exc:
            raise TypeError(
                f"{exc} (argument {param_name!r} of {name}); pass key='...' with a "
                f"template, leave the parameter out of the key with "
                f"ignore=({param_name!r},) if it is not data, or give the type a "
                "__cache_key__() method"
            ) from None
    args = ",".join(parts)
    if len(args) > MAX_ARGS_CHARS:
        args = "#" + hashlib.blake2b(args.encode(), digest_size=16).hexdigest()
    return f"{name}({args})"
