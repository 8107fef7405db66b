"""The values apps return, as trees JSON and msgpack can hold, and back.

Plain JSON (or msgpack) values are stored as they are. Everything else the
default codec keeps is written as a *tagged node*: a one-key dict
``{"$cw": [tag, ...]}``. The tags, and what they hold:

================  =========================================================
``tuple``         ``[items]``
``set``           ``[items]`` (``frozenset``: the same under ``frozenset``)
``dict``          ``[[key, value], ...]``: a dict whose keys the format cannot
                  hold as they are (``{1: "a"}`` in JSON, tuple keys), or one
                  that has a ``"$cw"`` key of its own
``bytes``         base64 text (JSON only; msgpack holds bytes)
``int``           hex text, for ints outside 64 bits
``float``         ``"nan"``, ``"inf"`` or ``"-inf"`` (JSON only)
``datetime``      ``[naive ISO text, zone, fold]``; zone: ``null`` (naive),
                  ``"UTC"``, ``["zone", key]`` (a ``zoneinfo.ZoneInfo``) or
                  ``["fixed", seconds, microseconds, name]`` (a ``timezone``)
``date``          ISO text
``time``          ``[naive ISO text, zone, fold]``
``timedelta``     ``[days, seconds, microseconds]``
``decimal``       ``str(value)``
``uuid``          32 hex digits
``enum``          ``["module.Class", value]``
``struct``        ``["module.Class", {field: value}]``: a dataclass, an attrs
                  class, a pydantic model or a ``NamedTuple``
================  =========================================================

The payload never chooses code: a tag names one of the constructors above, and
the classes of enum members and structs come from the reader (a registered enum,
or the type the reader passes: ``type=``, a cached function's return
annotation). A struct or an unregistered enum read without a type is a miss.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import json
import logging
import sys
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cachewise._core.envelope import DecodeError
from cachewise._sentinel import MISSING

logger = logging.getLogger("cachewise")

#: The key of a tagged node. A user's dict that has this key is stored in the
#: ``dict`` tag's pair form, so no user dict is ever read as a tagged node.
TAG = "$cw"
#: Containers nested deeper are refused at write (a cycle ends here too), in a
#: value that needs the tagged form (plain values may nest 200 deep: see
#: serialization). The tagged tree is up to four levels per container, and both
#: walks recurse: 100 keeps the reader well inside Python's recursion limit and
#: the stdlib JSON codec's.
MAX_DEPTH = 100
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

#: The type the current read expects (``get(..., type=T)``, a cached function's
#: return annotation). A context variable rather than an argument: the backend
#: decodes inside the caller's own call (its thread, its task), and the backend
#: protocol stays the same for every backend.
READ_TYPE: contextvars.ContextVar[Any] = contextvars.ContextVar("cachewise_read_type", default=None)


class Refused(TypeError):
    """A value the format cannot round-trip: ``where`` is its path, ``kind`` its type."""

    def __init__(self, message: str, kind: type, where: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.where = where


class Struct:
    """A structured value read back without its class: the class's path and its
    fields, until the reader's type rebuilds it."""

    __slots__ = ("fields", "meta", "name")

    def __init__(
        self,
        name: str,
        fields: dict[str, Any],
        meta: tuple[frozenset[str], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.fields = fields
        self.meta = meta  # (fields set, private attributes): pydantic models


class PydanticJson:
    """A pydantic-only value (``HttpUrl``...) in pydantic's JSON form, until the
    reader's field annotation validates it back."""

    __slots__ = ("value",)
    name = "pydantic value"

    def __init__(self, value: Any) -> None:
        self.value = value


class EnumRef:
    """An enum member read back before its class is known (not registered)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value


# -- registered enums ----------------------------------------------------------------

# Process-wide on purpose: register_enum() states a fact about a class, and
# classes are process-wide (the same Enum read by any cache must decode the same).
_enums: dict[str, type[enum.Enum]] = {}
_enum_round_trips: dict[enum.Enum, bool] = {}  # members whose values read back as them
_enums_lock = threading.Lock()


def class_path(cls: type) -> str:
    """``module.qualname``: how a payload names an enum or a struct class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_enum(cls: type[enum.Enum]) -> type[enum.Enum]:
    """Let the default codec store members of ``cls`` (usable as a decorator).

    Readers in every process must register it too (at import, next to the class),
    or read with a type that names it: a member of an enum the reader does not
    know is a miss. Enums named in a cached function's return annotation or a
    ``type=`` are registered when first seen.
    """
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
        raise TypeError(f"register_enum() takes an Enum class, not {cls!r}")
    name = class_path(cls)
    with _enums_lock:
        known = _enums.get(name)
        if known is not None and known is not cls:
            raise TypeError(
                f"two enum classes are named {name}: a payload could not tell them apart"
            )
        _enums[name] = cls
    return cls


def register_types_in(tp: Any) -> None:
    """Register every enum class ``tp`` mentions (``list[Color]``, a dataclass's
    fields, ...), so that writes of their members are accepted."""
    for cls in _classes_in(tp, set()):
        if issubclass(cls, enum.Enum):
            try:
                register_enum(cls)
            except TypeError:
                pass  # a name clash: the writer refuses the members, as unregistered


def _classes_in(tp: Any, seen: set[int]) -> Iterable[type]:
    if id(tp) in seen:
        return
    seen.add(id(tp))
    args = typing.get_args(tp)
    for arg in args:
        yield from _classes_in(arg, seen)
    if isinstance(tp, type):
        yield tp
        if _struct_kind(tp) is not None or typing.is_typeddict(tp):
            for hint in _hints(tp).values():
                yield from _classes_in(hint, seen)


# -- the formats ------------------------------------------------------------------------


class Format:
    """What one wire format holds natively: which scalars, which dict keys."""

    __slots__ = ("bytes_native", "keys", "name", "nonfinite_native")

    def plain_key(self, key: Any) -> bool:
        """Whether a dict key is stored as it is (else the dict takes the pair form)."""
        kind = type(key)
        if kind not in self.keys or key != key:  # noqa: PLR0124 - NaN
            return False
        if kind is int:
            return bool(_INT_MIN <= key <= _INT_MAX)
        if kind is str:
            try:
                key.encode()
            except UnicodeEncodeError:
                return False  # the pair form's walk refuses it, with its path
        return True

    def __init__(
        self, name: str, *, bytes_native: bool, nonfinite_native: bool, keys: frozenset[type]
    ) -> None:
        self.name = name
        self.bytes_native = bytes_native
        self.nonfinite_native = nonfinite_native
        self.keys = keys


_NoneType = type(None)
JSON = Format("JSON", bytes_native=False, nonfinite_native=False, keys=frozenset({str}))
# Only str and bytes keys in msgpack's own maps: their hashes are salted per
# process. Other keys take the dict tag's pair form, whose reader checks that no
# planted keys share one hash (see _spread).
MSGPACK = Format("msgpack", bytes_native=True, nonfinite_native=True, keys=frozenset({str, bytes}))
#: What a tree may hold besides lists and dicts; anything else (a msgpack
#: Timestamp or ExtType from a planted payload) is malformed.
TREE_SCALARS = frozenset({_NoneType, bool, int, float, str, bytes})


# -- writing: value -> tree --


def lower(value: Any, fmt: Format) -> Any:
    """``value`` as a tree ``fmt`` holds exactly, tagged where needed; ``Refused``
    (with the path) for anything that would not read back equal and of the same
    type."""
    return _Lowerer(fmt).lower(value, "value", 0)


def _tagged(tag: str, *payload: Any) -> dict[str, Any]:
    return {TAG: [tag, *payload]}


def _render_key(key: Any) -> str:
    # A str in double quotes, as the JSON it would become (and the docs spell it).
    text = json.dumps(key, ensure_ascii=True) if type(key) is str else repr(key)
    return f"[{text if len(text) <= 40 else text[:37] + '...'}]"


class _Lowerer:
    __slots__ = ("fmt", "open")

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.open: set[int] = set()  # ids of the containers being walked (cycles)

    def refuse(self, value: Any, where: str, why: str) -> Refused:
        kind = type(value)
        name = kind.__qualname__ if kind.__module__ == "builtins" else class_path(kind)
        return Refused(f"{self.fmt.name} cannot store the {name} at {where}: {why}", kind, where)

    def lower(self, value: Any, where: str, depth: int) -> Any:
        kind = type(value)
        if value is MISSING:
            raise self.refuse(value, where, _advice(value))
        if kind is str:
            try:
                value.encode()
            except UnicodeEncodeError:
                raise self.refuse(
                    value, where, "it holds a lone surrogate, which UTF-8 cannot encode"
                ) from None
            return value
        if kind is int:
            if _INT_MIN <= value <= _INT_MAX:
                return value
            text = format(value, "x")  # hex: no digit limit, unlike str()
            if len(text) > _INT_HEX_MAX:
                raise self.refuse(value, where, "it is wider than 400,000 bits; store it as bytes")
            return _tagged("int", text)
        if kind is bool or value is None:
            return value
        if kind is float:
            if self.fmt.nonfinite_native or value - value == 0.0:
                return value
            return _tagged("float", repr(value))  # 'nan', 'inf', '-inf'
        if kind is list or kind is tuple or kind is set or kind is frozenset or kind is dict:
            return self.container(value, kind, where, depth)
        if kind is bytes:
            if self.fmt.bytes_native:
                return value
            return _tagged("bytes", base64.b64encode(value).decode("ascii"))
        lowerer = _SCALARS.get(kind)
        if lowerer is not None:
            return lowerer(self, value, where)
        if isinstance(value, enum.Enum):
            return self.enum_member(value, where, depth)
        struct = _struct_kind(kind)
        if struct is not None:
            return self.struct(value, struct, where, depth)
        raise self.refuse(value, where, _advice(value))

    def enter(self, value: Any, where: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise self.refuse(
                value,
                where,
                f"it is nested more than {MAX_DEPTH} containers deep (a value that "
                "needs the tagged form may nest 100 deep, plain JSON or msgpack 200); "
                "flatten it",
            )
        if id(value) in self.open:
            raise self.refuse(value, where, "it contains itself; break the cycle")
        self.open.add(id(value))

    def container(self, value: Any, kind: type, where: str, depth: int) -> Any:
        self.enter(value, where, depth)
        try:
            lower = self.lower
            inner = depth + 1
            if kind is list:
                return [lower(item, f"{where}[{i}]", inner) for i, item in enumerate(value)]
            if kind is tuple:
                items = [lower(item, f"{where}[{i}]", inner) for i, item in enumerate(value)]
                return _tagged("tuple", items)
            if kind is set or kind is frozenset:
                items = [self.key(item, f"{where} item", inner) for item in value]
                return _tagged("set" if kind is set else "frozenset", items)
            if TAG not in value and all(self.fmt.plain_key(k) for k in value):
                return {k: lower(v, f"{where}{_render_key(k)}", inner) for k, v in value.items()}
            pairs = [
                [
                    self.key(k, f"{where} key {_render_key(k)}", inner),
                    lower(v, f"{where}{_render_key(k)}", inner),
                ]
                for k, v in value.items()
            ]
            return _tagged("dict", pairs)
        finally:
            self.open.discard(id(value))

    def key(self, value: Any, where: str, depth: int) -> Any:
        """A dict key or a set item: hashable, and found again after a read."""
        if _holds_nan(value):
            raise self.refuse(
                value,
                where,
                "a NaN key or set item (or one holding a NaN) reads back as a new NaN "
                "no lookup finds",
            )
        if _struct_kind(type(value)) is not None:
            raise self.refuse(value, where, "a structured value cannot be a dict key or a set item")
        return self.lower(value, where, depth)

    def pydantic_leaf(self, item: Any, annotation: Any, where: str, depth: int) -> Any:
        secret = getattr(item, "get_secret_value", None)
        try:
            adapter = _pydantic_adapter(annotation)
            # A secret's JSON form is its mask: store what it hides.
            dumped = secret() if callable(secret) else adapter.dump_python(item, mode="json")
            back = adapter.validate_python(dumped)
            same = type(back) is type(item) and back == item
        except Exception:
            same = False
        if not same:
            # (an Any field holding an IPv4Address would come back a str)
            raise self.refuse(item, where, _advice(item))
        return _tagged("pydantic", self.lower(dumped, where, depth + 1))

    def enum_member(self, value: enum.Enum, where: str, depth: int) -> Any:
        cls = type(value)
        name = class_path(cls)
        if _enums.get(name) is not cls:
            raise self.refuse(
                value,
                where,
                f"{cls.__name__} is not a registered enum: register it with "
                f"cachewise.serialization.register_enum({cls.__name__}) where it is defined "
                "(every reader needs it), or name it in the cached function's return type",
            )
        lowered = self.lower(value.value, f"{where}.value", depth + 1)
        known = _enum_round_trips.get(value)
        if known is None:
            # A member whose value reads back as another member, or as nothing (a
            # NaN value, a struct that needs a type), would never be found again.
            try:
                lifted, needs_type = lift(lowered, self.fmt)
                known = not needs_type and _member(cls, lifted) is value
            except Exception:
                known = False
            if len(_enum_round_trips) < 65_536:
                _enum_round_trips[value] = known
        if not known:
            raise self.refuse(
                value, where, "its value does not read back as this member; give it a plain value"
            )
        return _tagged("enum", name, lowered)

    def struct(self, value: Any, kind: str, where: str, depth: int) -> Any:
        cls = type(value)
        if "<locals>" in cls.__qualname__:
            raise self.refuse(
                value,
                where,
                "its class is defined inside a function, so a reader cannot name it; "
                "define it at module level",
            )
        self.enter(value, where, depth)
        try:
            try:
                fields = _struct_fields(value, kind)
            except Exception as exc:  # an unset init=False field, a broken property
                raise self.refuse(value, where, f"its fields cannot be read ({exc!r})") from None
            if TAG in fields:
                raise self.refuse(value, where, f"a field named {TAG!r} would read as a tag")
            owner: Any = cls
            annotations = _model_annotations(owner) if kind == "pydantic" else {}
            lowered = {}
            for name, item in fields.items():
                try:
                    lowered[name] = self.lower(item, f"{where}.{name}", depth + 1)
                except Refused:
                    if name not in annotations:
                        raise
                    # A pydantic-only type (HttpUrl, SecretStr...): pydantic's own
                    # JSON form of it, validated back with the field's annotation.
                    lowered[name] = self.pydantic_leaf(
                        item, annotations[name], f"{where}.{name}", depth
                    )
            if kind != "pydantic":
                extras = _extra_attributes(value, fields)
                if not extras:
                    return _tagged("struct", class_path(cls), lowered)
                meta = {
                    "set": [],
                    "private": {
                        name: self.lower(item, f"{where}.{name}", depth + 1)
                        for name, item in extras.items()
                    },
                }
                return _tagged("struct", class_path(cls), lowered, meta)
            # What else makes two models equal, or shows in their dumps: which
            # fields were set, and the private attributes.
            private = getattr(value, "__pydantic_private__", None) or {}
            meta = {
                "set": sorted(value.model_fields_set),
                "private": {
                    name: self.lower(item, f"{where}.{name}", depth + 1)
                    for name, item in private.items()
                },
            }
        finally:
            self.open.discard(id(value))
        return _tagged("struct", class_path(cls), lowered, meta)


def _zone(value: dt.tzinfo | None, owner: Any) -> Any:
    """How a datetime's or time's zone is written; ``None`` for a naive one."""
    if value is None:
        return None
    if value is dt.timezone.utc:
        return "UTC"
    if type(value) is dt.timezone:
        offset = value.utcoffset(None)
        return [
            "fixed",
            offset.days * 86400 + offset.seconds,
            offset.microseconds,
            value.tzname(None),
        ]
    key = getattr(value, "key", None)
    if type(value).__module__ == "zoneinfo" and isinstance(key, str):
        return ["zone", key]
    raise _ZoneRefused(type(value))


class _ZoneRefused(Exception):
    def __init__(self, kind: type) -> None:
        self.kind = kind


def _lower_clock(lowerer: _Lowerer, value: dt.datetime | dt.time, where: str) -> Any:
    """A datetime or a time: its naive ISO text, its zone and its fold."""
    try:
        zone = _zone(value.tzinfo, value)
    except _ZoneRefused as exc:
        raise lowerer.refuse(value, where, _zone_advice(exc.kind)) from None
    tag = "datetime" if type(value) is dt.datetime else "time"
    return _tagged(tag, value.replace(tzinfo=None).isoformat(), zone, value.fold)


def _zone_advice(kind: type) -> str:
    return (
        f"its tzinfo is a {class_path(kind)}, which would not read back as the same zone; "
        "use zoneinfo.ZoneInfo or datetime.timezone"
    )


def _lower_timedelta(lowerer: _Lowerer, value: dt.timedelta, where: str) -> Any:
    return _tagged("timedelta", [value.days, value.seconds, value.microseconds])


_SCALARS: dict[type, Callable[[_Lowerer, Any, str], Any]] = {
    dt.datetime: _lower_clock,
    dt.date: lambda lowerer, value, where: _tagged("date", value.isoformat()),
    dt.time: _lower_clock,
    dt.timedelta: _lower_timedelta,
    decimal.Decimal: lambda lowerer, value, where: _tagged("decimal", str(value)),
    uuid.UUID: lambda lowerer, value, where: _tagged("uuid", value.hex),
}


def _advice(value: Any) -> str:
    """Why ``value``'s type is refused, and what to store instead."""
    if value is MISSING:
        return "MISSING marks a miss and is never cached; cache None or a marker of your own"
    for base in (bool, int, float, str, bytes, list, tuple, dict, set, frozenset):
        if isinstance(value, base):
            name = base.__name__
            return (
                f"a subclass of {name} would come back as a plain {name}; "
                f"convert it with {name}(...)"
            )
    if isinstance(value, (bytearray, memoryview)):
        return "it would come back as bytes; convert it with bytes(...)"
    if isinstance(value, (dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID)):
        return "a subclass would come back as its base class; convert it"
    return (
        "the default codec stores None, bool, int, float, str, bytes, list, tuple, dict, "
        "set, frozenset, datetime, date, time, timedelta, Decimal, UUID, registered enums, "
        "dataclasses, attrs classes, pydantic models and NamedTuples; convert it, or use "
        "PickleSerializer(secret=...)"
    )


# -- structured types --


def _struct_kind(cls: Any) -> str | None:
    """``"dataclass"``, ``"attrs"``, ``"pydantic"``, ``"namedtuple"`` or None."""
    kind: str | None = _struct_kind_of(cls)
    return kind


@functools.lru_cache(maxsize=1024)  # (bounded: classes made in a loop must not pile up)
def _struct_kind_of(cls: Any) -> str | None:
    if not isinstance(cls, type):
        return None
    if "__dataclass_fields__" in cls.__dict__ or (
        dataclasses.is_dataclass(cls) and not issubclass(cls, enum.Enum)
    ):
        return "dataclass"
    if getattr(cls, "__attrs_attrs__", None) is not None:
        return "attrs"
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return "namedtuple"
    if any(
        base.__module__ == "pydantic.main" and base.__name__ == "BaseModel" for base in cls.__mro__
    ):
        return "pydantic"
    return None


def _extra_attributes(value: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Instance attributes beside a dataclass's or attrs class's fields (set by
    ``__post_init__``, or by a subclass's ``__init__``)."""
    attributes = getattr(value, "__dict__", None)
    if not isinstance(attributes, dict):
        return {}
    return {name: item for name, item in attributes.items() if name not in fields}


def _struct_fields(value: Any, kind: str) -> dict[str, Any]:
    if kind == "dataclass":
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if kind == "attrs":
        return {a.name: getattr(value, a.name) for a in type(value).__attrs_attrs__}
    if kind == "namedtuple":
        return dict(zip(type(value)._fields, value, strict=True))
    # pydantic: the attributes themselves (not model_dump: aliases, exclude=True
    # and serializers would change what reads back), and any extras.
    fields = {name: getattr(value, name) for name in type(value).model_fields}
    extra = getattr(value, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        fields.update(extra)
    return fields


@functools.lru_cache(maxsize=1024)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    # One annotation does not resolve (a name imported only under TYPE_CHECKING):
    # resolve the others one by one, so only that field goes untyped.
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        for name, written in vars(base).get("__annotations__", {}).items():
            resolved = written
            if isinstance(written, str):
                try:
                    # The reader's own source text, as get_type_hints evaluates it.
                    resolved = eval(written, namespace, dict(vars(cls)))
                except Exception:
                    hints.pop(name, None)
                    continue
            hints[name] = resolved
    return hints


# -- reading: tree -> value --


def lift(tree: Any, fmt: Format) -> tuple[Any, bool]:
    """The value a tagged tree stands for, and whether it holds structs or enum
    members that need the reader's type. Any malformed node: ``DecodeError``."""
    lifter = _Lifter(fmt)
    return lifter.lift(tree, 0), lifter.needs_type


class _Lifter:
    __slots__ = ("fmt", "needs_type")

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.needs_type = False

    # ``depth`` counts the value's containers above the node, as the writer does
    # (not the tree's levels): whatever the writer accepted, the reader reads.

    def lift(self, node: Any, depth: int) -> Any:
        kind = type(node)
        if kind is list:
            _check_depth(depth)
            return [self.lift(item, depth + 1) for item in node]
        if kind is not dict:
            if kind not in TREE_SCALARS:
                raise DecodeError(f"a {kind.__name__} in the payload")
            return node
        if TAG not in node:
            _check_depth(depth)
            return {k: self.lift(v, depth + 1) for k, v in node.items()}
        body = node[TAG]
        if len(node) != 1 or type(body) is not list or not body or type(body[0]) is not str:
            raise DecodeError("a malformed tagged node")
        reader = _LIFTERS.get(body[0])
        if reader is None:
            raise DecodeError(f"unknown tag {body[0]!r}")
        return reader(self, body[1:], depth)

    def items(self, body: list[Any], depth: int) -> list[Any]:
        """The items of a tagged container at ``depth``."""
        if len(body) != 1 or type(body[0]) is not list:
            raise DecodeError("a malformed sequence node")
        _check_depth(depth)
        return [self.lift(item, depth + 1) for item in body[0]]


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise DecodeError("nested too deeply")


#: Past this many items, a set or dict read from a payload is checked for items
#: that share one hash: ints, floats and tuples hash the same in every process,
#: and a planted set of colliding ones would make building it quadratic (tens of
#: seconds with the GIL held). str and bytes hashes are salted per process.
_SPREAD_FROM = 64
_SAME_HASH_MAX = 64  # (hash(-1) == hash(-2): honest tuples of small ints share some)


def _spread(items: list[Any]) -> list[Any]:
    if len(items) > _SPREAD_FROM:
        counts: dict[int, int] = {}
        for item in items:
            digest = hash(item)
            seen = counts.get(digest, 0) + 1
            if seen > _SAME_HASH_MAX:
                raise DecodeError("a set or dict whose items share one hash")
            counts[digest] = seen
    return items


def _text(body: list[Any], count: int = 1) -> str:
    if len(body) != count or type(body[0]) is not str:
        raise DecodeError("a malformed node")
    return body[0]


def _read_zone(zone: Any) -> dt.tzinfo | None:
    if zone is None:
        return None
    if zone == "UTC":
        return dt.timezone.utc
    if type(zone) is list and len(zone) == 2 and zone[0] == "zone" and type(zone[1]) is str:
        import zoneinfo

        return zoneinfo.ZoneInfo(zone[1])
    if (
        type(zone) is list
        and len(zone) == 4
        and zone[0] == "fixed"
        and type(zone[1]) is int
        and type(zone[2]) is int
        and type(zone[3]) is str
    ):
        return dt.timezone(dt.timedelta(seconds=zone[1], microseconds=zone[2]), zone[3])
    raise DecodeError("a malformed zone")


def _lift_clock(body: list[Any], parse: Callable[[str], Any]) -> Any:
    if (
        len(body) != 3
        or type(body[0]) is not str
        or body[2] not in (0, 1)
        or type(body[2]) is not int
    ):
        raise DecodeError("a malformed datetime or time")
    return parse(body[0]).replace(tzinfo=_read_zone(body[1]), fold=body[2])


def _lift_dict(lifter: _Lifter, body: list[Any], depth: int) -> dict[Any, Any]:
    if len(body) != 1 or type(body[0]) is not list:
        raise DecodeError("a malformed dict node")
    _check_depth(depth)
    lift = lifter.lift
    pairs: list[tuple[Any, Any]] = []
    for pair in body[0]:
        if type(pair) is not list or len(pair) != 2:
            raise DecodeError("a malformed dict pair")
        pairs.append((lift(pair[0], depth + 1), lift(pair[1], depth + 1)))
    _spread([key for key, _ in pairs])
    # (an unhashable key raises TypeError: a DecodeError upstream)
    return dict(pairs)


_INT_HEX_MAX = 100_000  # hex digits of the widest int stored (400,000 bits)


def _lift_int(lifter: _Lifter, body: list[Any], depth: int) -> int:
    text = _text(body)
    if len(text) > _INT_HEX_MAX + 1:  # (+1: the sign)
        raise DecodeError("an int too long")
    return int(text, 16)


def _lift_float(lifter: _Lifter, body: list[Any], depth: int) -> float:
    text = _text(body)
    if text not in ("nan", "inf", "-inf"):
        raise DecodeError("a malformed float")
    return float(text)


def _lift_enum(lifter: _Lifter, body: list[Any], depth: int) -> Any:
    if len(body) != 2 or type(body[0]) is not str:
        raise DecodeError("a malformed enum member")
    value = lifter.lift(body[1], depth)
    cls = _enums.get(body[0])
    if cls is None:
        lifter.needs_type = True
        return EnumRef(body[0], value)
    return _member(cls, value)


def _member(cls: Any, raw: Any) -> Any:
    """``cls(raw)``; a flag value with bits the class does not define is refused
    (the class would keep a new pseudo-member for each one, for good)."""
    if issubclass(cls, enum.Flag) and type(raw) is int and raw & ~_flag_bits(cls):
        raise DecodeError(f"a {class_path(cls)} value with bits it does not define")
    return cls(raw)


def _flag_bits(cls: Any) -> int:
    bits = 0
    for member in cls.__members__.values():
        if type(member.value) is int or isinstance(member.value, int):
            bits |= int(member.value)
    return bits


def _lift_struct(lifter: _Lifter, body: list[Any], depth: int) -> Struct:
    if len(body) not in (2, 3) or type(body[0]) is not str or type(body[1]) is not dict:
        raise DecodeError("a malformed struct")
    if TAG in body[1] or not all(type(k) is str for k in body[1]):
        raise DecodeError("a malformed struct")
    _check_depth(depth)
    fields = {name: lifter.lift(item, depth + 1) for name, item in body[1].items()}
    meta = None
    if len(body) == 3:  # a pydantic model's fields set and private attributes
        raw = body[2]
        if (
            type(raw) is not dict
            or set(raw) != {"set", "private"}
            or type(raw["set"]) is not list
            or not all(type(name) is str for name in raw["set"])
            or type(raw["private"]) is not dict
            or TAG in raw["private"]
        ):
            raise DecodeError("a malformed struct")
        meta = (
            frozenset(raw["set"]),
            {name: lifter.lift(item, depth + 1) for name, item in raw["private"].items()},
        )
    lifter.needs_type = True
    return Struct(body[0], fields, meta)


def _lift_pydantic(lifter: _Lifter, body: list[Any], depth: int) -> PydanticJson:
    if len(body) != 1:
        raise DecodeError("a malformed pydantic value")
    lifter.needs_type = True
    return PydanticJson(lifter.lift(body[0], depth))


def _lift_bytes(lifter: _Lifter, body: list[Any], depth: int) -> bytes:
    return base64.b64decode(_text(body), validate=True)


_LIFTERS: dict[str, Callable[[_Lifter, list[Any], int], Any]] = {
    "tuple": lambda lifter, body, depth: tuple(lifter.items(body, depth)),
    "set": lambda lifter, body, depth: set(_spread(lifter.items(body, depth))),
    "frozenset": lambda lifter, body, depth: frozenset(_spread(lifter.items(body, depth))),
    "dict": _lift_dict,
    "bytes": _lift_bytes,
    "int": _lift_int,
    "float": _lift_float,
    "datetime": lambda lifter, body, depth: _lift_clock(body, dt.datetime.fromisoformat),
    "date": lambda lifter, body, depth: dt.date.fromisoformat(_text(body)),
    "time": lambda lifter, body, depth: _lift_clock(body, dt.time.fromisoformat),
    "timedelta": lambda lifter, body, depth: _lift_timedelta(body),
    "decimal": lambda lifter, body, depth: decimal.Decimal(_text(body)),
    "uuid": lambda lifter, body, depth: uuid.UUID(hex=_text(body)),
    "enum": _lift_enum,
    "struct": _lift_struct,
    "pydantic": _lift_pydantic,
}


def _lift_timedelta(body: list[Any]) -> dt.timedelta:
    if len(body) != 1 or type(body[0]) is not list or len(body[0]) != 3:
        raise DecodeError("a malformed timedelta")
    days, seconds, micros = body[0]
    if not all(type(n) is int for n in (days, seconds, micros)):
        raise DecodeError("a malformed timedelta")
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


# -- the reader's type ----------------------------------------------------------------------


# Logged once per class or type, for the process: bounded by the classes the
# code names.
_warned_untyped: set[str] = set()
_WARNED_MAX = 256


def finish(value: Any, needs_type: bool) -> Any:
    """A lifted value made whole with the reader's type (``READ_TYPE``), or
    ``DecodeError`` (a miss) when it holds what only a type can rebuild and the
    reader gave none, or gave one that does not fit."""
    tp = READ_TYPE.get()
    if tp is None:
        if needs_type:
            name = _first_unresolved(value)[:200]  # (the payload's text: bounded)
            if name not in _warned_untyped and len(_warned_untyped) < _WARNED_MAX:
                _warned_untyped.add(name)
                logger.warning(
                    "cachewise: an entry holds a %s, which is read back only with its type: "
                    "pass type=%s to get()/get_or_load(), or annotate the cached function's "
                    "return; read as a miss",
                    name,
                    name.rsplit(".", 1)[-1],
                )
            raise DecodeError(f"an entry holding a {name[:200]} was read without a type")
        return value
    if value is None:
        # None fits every type: a function declared "-> User" that returns None
        # for "not found" keeps its negative entries (they must not reload).
        return value
    try:
        if not needs_type and not _is_structured(tp):
            # Nothing to rebuild: a plain entry is checked against the type at its
            # top and down the first item of each collection (a whole walk would
            # cost every hit a pass over the value), so an entry another writer
            # left (plain dicts where models are expected) is a miss, not a
            # wrong value.
            if not _shallow_fits(value, tp, 0):
                raise _Mismatch(f"a {type(value).__name__} does not fit {_type_name(tp)}")
            return value
        return convert(value, tp)
    except _Mismatch as exc:
        name = _type_name(tp)
        if name not in _warned_mismatch and len(_warned_mismatch) < _WARNED_MAX:
            _warned_mismatch.add(name)
            logger.warning(
                "cachewise: an entry does not fit the reader's type %s (%s); read as a miss",
                name,
                exc,
            )
        raise


_warned_mismatch: set[str] = set()


def _type_name(tp: Any) -> str:
    return class_path(tp) if isinstance(tp, type) else repr(tp)


def _first_unresolved(value: Any, depth: int = 0) -> str:
    if isinstance(value, (Struct, EnumRef, PydanticJson)):
        return value.name
    if depth < MAX_DEPTH:
        children: Iterable[Any] = ()
        if isinstance(value, dict):
            children = (*value.keys(), *value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = value
        for child in children:
            found = _first_unresolved(child, depth + 1)
            if found:
                return found
    return ""


def _bound(tp: Any, env: Env | None) -> Any:
    return (env or {}).get(tp, Any) if isinstance(tp, typing.TypeVar) else tp


def _shallow_fits(value: Any, tp: Any, depth: int) -> bool:
    if depth > 20 or value is None:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _shallow_fits(value, args[0], depth)
    if origin is typing.Union or origin is types.UnionType:
        return any(_shallow_fits(value, member, depth) for member in args)
    if origin in (list, set, frozenset, tuple):
        if not isinstance(value, origin):
            return False
        if not value or not args or (origin is tuple and len(args) != 2):
            return True
        return _shallow_fits(next(iter(value)), args[0], depth + 1)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        if not value or len(args) != 2:
            return True
        key, item = next(iter(value.items()))
        return _shallow_fits(key, args[0], depth + 1) and _shallow_fits(item, args[1], depth + 1)
    if origin is not None or tp is Any or tp is object or not isinstance(tp, type):
        return True  # (Literal, Any, TypeVars, abstract collections: not checked)
    if _struct_kind(tp) is not None:
        return False  # a struct is never stored plain
    if typing.is_typeddict(tp):
        return isinstance(value, dict)
    # The numeric tower as type checkers read it: an int (a bool too) is a
    # float, and either is a complex.
    if tp is float:
        return isinstance(value, (int, float))
    if tp is complex:
        return isinstance(value, (int, float, complex))
    try:
        return isinstance(value, tp)
    except TypeError:  # (a Protocol that is not runtime-checkable, say)
        return True


def _is_structured(tp: Any) -> bool:
    return isinstance(tp, type) and (_struct_kind(tp) is not None or typing.is_typeddict(tp))


class _Mismatch(DecodeError):
    """The stored value does not fit the reader's type."""


Env = dict[Any, Any]  # a generic's type variables -> the types they stand for


def convert(value: Any, tp: Any, env: Env | None = None) -> Any:
    """``value`` (a lifted tree) as the type ``tp`` says: structs and enum members
    rebuilt with the classes ``tp`` names (or their subclasses). ``DecodeError``
    if it does not fit."""
    if isinstance(tp, typing.TypeVar):
        tp = (env or {}).get(tp, Any)
    if isinstance(value, PydanticJson):
        try:
            return _pydantic_adapter(tp).validate_python(value.value)
        except Exception as exc:
            raise _Mismatch(f"a pydantic value does not fit {tp!r}: {exc!r}") from None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return convert(value, typing.get_args(tp)[0], env)
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(value, typing.get_args(tp), env)
    if origin is typing.Literal:
        return _untyped(value)
    if origin is not None:
        return _convert_generic(value, origin, typing.get_args(tp), env)
    if tp is Any or tp is object or not isinstance(tp, type):
        # No class to rebuild with (Any, a NewType...): only a plain value passes.
        if isinstance(tp, typing.NewType):
            return convert(value, tp.__supertype__, env)
        return _untyped(value)
    if isinstance(value, Struct):
        cls = _named_class(tp, value.name)
        generic = getattr(tp, "__pydantic_generic_metadata__", None)
        if cls is not tp and generic and cls is generic.get("origin"):
            # The bare model's fields say T: bind it to what Page[User] says.
            params = cls.__pydantic_generic_metadata__.get("parameters", ())
            env = {**(env or {}), **dict(zip(params, generic.get("args", ()), strict=False))}
        return _build(value, cls, env)
    if isinstance(value, EnumRef):
        if issubclass(tp, enum.Enum):
            return _enum_member(_named_class(tp, value.name), value.value)
        raise _Mismatch(f"a {value.name} member is not a {class_path(tp)}")
    if typing.is_typeddict(tp):
        if type(value) is not dict:
            raise _Mismatch(f"a {type(value).__name__} is not a {class_path(tp)}")
        hints = _hints(tp)
        return {
            k: convert(v, hints[k], env) if k in hints else _untyped(v) for k, v in value.items()
        }
    if _struct_kind(tp) is not None:
        raise _Mismatch(f"a {type(value).__name__} is not a {class_path(tp)}")
    if tp is float and type(value) is int:
        return value  # (an int is a float as far as annotations go)
    if not isinstance(value, tp):
        raise _Mismatch(f"a {type(value).__name__} is not a {tp.__name__}")
    return _untyped(value)


def _named_class(tp: type, name: str) -> Any:
    """``tp``, or the subclass of it the payload names (a ``Dog`` stored where an
    ``Animal`` is declared): only classes the reader's code defined and declared
    compatible, never one the payload chooses from elsewhere."""
    if class_path(tp) == name:
        return tp
    generic = getattr(tp, "__pydantic_generic_metadata__", None)
    if generic and generic.get("origin") is not None and class_path(generic["origin"]) == name:
        # Page[User] declared, a bare Page(...) stored: the unparametrized model.
        return generic["origin"]
    seen: set[type] = set()
    stack: list[type] = list(tp.__subclasses__())
    while stack and len(seen) < 10_000:
        sub = stack.pop()
        if sub in seen:
            continue
        seen.add(sub)
        if class_path(sub) == name:
            return sub
        stack.extend(sub.__subclasses__())
    raise _Mismatch(f"a {name} is not a {class_path(tp)}")


def _enum_member(cls: Any, raw: Any) -> Any:
    if not issubclass(cls, enum.Enum):
        raise _Mismatch(f"{class_path(cls)} is not an enum")
    try:
        return _member(cls, raw)
    except DecodeError:
        raise
    except Exception as exc:
        raise _Mismatch(f"not a {class_path(cls)} member: {exc!r}") from None


def _untyped(value: Any) -> Any:
    """``value`` unchanged, if it holds nothing a type must rebuild."""
    unresolved = _first_unresolved(value)
    if unresolved:
        raise _Mismatch(f"a {unresolved} needs its type")
    return value


def _convert_union(value: Any, members: tuple[Any, ...], env: Env | None) -> Any:
    if value is None and _NoneType in members:
        return None
    if isinstance(value, (Struct, EnumRef)):
        # The member the payload names (or one of its subclasses), first.
        for member in members:
            if isinstance(member, type):
                try:
                    named = _named_class(member, value.name)
                except _Mismatch:
                    continue
                return convert(value, named, env)
    for member in members:
        if member is _NoneType:
            continue
        try:
            return convert(value, member, env)
        except _Mismatch:
            continue
    raise _Mismatch(f"a {type(value).__name__} fits none of {members}")


_SEQUENCES = {list: list, tuple: tuple, set: set, frozenset: frozenset}


def _convert_generic(value: Any, origin: Any, args: tuple[Any, ...], env: Env | None) -> Any:
    from collections import abc

    if origin in (dict, abc.Mapping, abc.MutableMapping):
        if type(value) is not dict:
            raise _Mismatch(f"a {type(value).__name__} is not a dict")
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        return {convert(k, key_tp, env): convert(v, value_tp, env) for k, v in value.items()}
    if origin is tuple:
        if type(value) is not tuple:
            raise _Mismatch(f"a {type(value).__name__} is not a tuple")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(item, args[0], env) for item in value)
        if args == ((),):
            args = ()
        if len(args) != len(value):
            raise _Mismatch("a tuple of another length")
        return tuple(convert(item, arg, env) for item, arg in zip(value, args, strict=True))
    if origin in (
        list,
        set,
        frozenset,
        abc.Sequence,
        abc.MutableSequence,
        abc.Set,
        abc.Collection,
        abc.Iterable,
    ):
        expected = _SEQUENCES.get(origin)
        if expected is not None and type(value) is not expected:
            raise _Mismatch(f"a {type(value).__name__} is not a {expected.__name__}")
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _Mismatch(f"a {type(value).__name__} is not a collection")
        item_tp = args[0] if args else Any
        return type(value)(convert(item, item_tp, env) for item in value)
    if isinstance(origin, type) and _struct_kind(origin) is not None:
        # A generic dataclass (Page[User]): by its class, its type variables bound.
        params = getattr(origin, "__parameters__", ())
        bound = {var: convert_var(arg, env) for var, arg in zip(params, args, strict=False)}
        if not isinstance(value, Struct):
            raise _Mismatch(f"a {type(value).__name__} is not a {class_path(origin)}")
        return _build(value, _named_class(origin, value.name), {**(env or {}), **bound})
    return _untyped(value)


def convert_var(arg: Any, env: Env | None) -> Any:
    """A generic's argument, itself maybe a type variable of an outer generic."""
    return (env or {}).get(arg, arg) if isinstance(arg, typing.TypeVar) else arg


def _build(value: Struct, cls: Any, env: Env | None = None) -> Any:
    """The instance of ``cls`` a struct stands for, made without calling
    ``__init__``: its fields already hold what ``__init__``, ``__post_init__``,
    converters and validators made of them when the value was built, and running
    them again would change them (an InitVar, a converter that appends)."""
    kind = _struct_kind(cls)
    if kind is None or value.name != class_path(cls):
        raise _Mismatch(f"a {value.name} is not a {class_path(cls)}")
    fields = value.fields
    try:
        if kind == "pydantic":
            return _build_model(cls, value, env)
        hints = _hints(cls)
        if kind == "namedtuple":
            names: tuple[str, ...] = cls._fields
        elif kind == "dataclass":
            names = tuple(f.name for f in dataclasses.fields(cls))
        else:
            names = tuple(a.name for a in cls.__attrs_attrs__)
        if tuple(fields) != names and set(fields) != set(names):
            raise _Mismatch(f"the stored {value.name} has other fields than the class")
        env = {**_generic_bases(cls), **(env or {})}
        typed = {name: _field(fields[name], hints.get(name), env) for name in names}
        if kind == "namedtuple":
            return tuple.__new__(cls, [typed[name] for name in names])
        obj = cls.__new__(cls)
        for name in names:
            object.__setattr__(obj, name, typed[name])  # (frozen and slotted classes too)
        # Attributes __post_init__ (or a subclass's __init__) set beside the fields.
        for name, item in (value.meta[1] if value.meta is not None else {}).items():
            object.__setattr__(obj, name, _untyped(item))
        return obj
    except DecodeError:
        raise
    except Exception as exc:
        raise _Mismatch(f"cannot rebuild a {value.name}: {exc!r}") from None


def _generic_bases(cls: Any) -> Env:
    """The type variables a class binds by subclassing (``class UserPage(Page[User])``)."""
    env: Env = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            params = getattr(origin, "__parameters__", ())
            for var, arg in zip(params, typing.get_args(base), strict=False):
                env[var] = env.get(arg, arg) if isinstance(arg, typing.TypeVar) else arg
    return env


def _field(item: Any, annotation: Any, env: Env | None) -> Any:
    """A stored field's value: as it was stored (exact already), unless it holds
    what only its annotation can rebuild (a struct, an enum of an unregistered
    class, a pydantic-only value). A plain value is checked against the
    annotation as the reader's type is (its top and first items): an entry an
    older version of the class wrote (a dict where a model now is) is a miss."""
    if not _first_unresolved(item):
        if annotation is not None and not _shallow_fits(item, _bound(annotation, env), 0):
            raise _Mismatch(f"a stored {type(item).__name__} does not fit {annotation!r}")
        return item
    if annotation is None:
        raise _Mismatch(f"a {_first_unresolved(item)} in a field without a type")
    return convert(item, annotation, env)


def _build_model(cls: Any, value: Struct, env: Env | None) -> Any:
    """A pydantic model from its stored attributes, converted by the field
    annotations and set with ``model_construct`` (validators ran when the value
    was made; running them again could change it)."""
    declared = cls.model_fields
    stored = value.fields
    extra_allowed = cls.model_config.get("extra") == "allow"
    if not set(declared) <= set(stored) or (not extra_allowed and not set(stored) <= set(declared)):
        raise _Mismatch(f"the stored {value.name} has other fields than the class")
    annotations = _model_annotations(cls)
    values = {name: _field(item, annotations.get(name), env) for name, item in stored.items()}
    fields_set, private = value.meta if value.meta is not None else (frozenset(declared), {})
    private_values = {name: _untyped(item) for name, item in private.items()}
    # Set as model_construct would, but by field name: model_construct matches
    # aliases first, and an alias may name another field.
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", {name: values[name] for name in declared})
    extra = {name: item for name, item in values.items() if name not in declared}
    object.__setattr__(
        obj, "__pydantic_fields_set__", set(fields_set) & (set(declared) | set(extra))
    )
    object.__setattr__(obj, "__pydantic_extra__", extra if extra_allowed else None)
    object.__setattr__(obj, "__pydantic_private__", private_values or None)
    if private_values and not getattr(cls, "__private_attributes__", None):
        raise _Mismatch(f"the stored {value.name} has private attributes the class has not")
    return obj


@functools.lru_cache(maxsize=256)
def _model_annotations(cls: Any) -> dict[str, Any]:
    return {name: info.annotation for name, info in cls.model_fields.items()}


@functools.lru_cache(maxsize=256)
def _pydantic_adapter(cls: type) -> Any:
    import pydantic

    return pydantic.TypeAdapter(cls)


_expected: set[Any] = set()  # reader types whose enums are registered already
_EXPECTED_MAX = 4096


def expect(tp: Any) -> contextvars.Token[Any]:
    """Make ``tp`` the type of the reads in this call (reset with the token) and
    register the enums it names, so their members can be written too."""
    try:
        known = tp in _expected
    except TypeError:  # an unhashable annotation: register every time
        known = False
    if not known:
        register_types_in(tp)
        try:
            if len(_expected) < _EXPECTED_MAX:
                _expected.add(tp)
        except TypeError:
            pass
    return READ_TYPE.set(tp)


def _holds_nan(value: Any, depth: int = 0) -> bool:
    """Whether a key or set item is or holds (in a tuple or frozenset) a NaN."""
    if value != value:  # noqa: PLR0124 - NaN (float or Decimal)
        return True
    if type(value) in (tuple, frozenset) and depth < MAX_DEPTH:
        return any(_holds_nan(item, depth + 1) for item in value)
    return False


def restore(token: contextvars.Token[Any]) -> None:
    """Undo a ``READ_TYPE.set``; a no-op in another context (a load coroutine
    closed by the garbage collector after its loop ended runs its ``finally``
    there)."""
    try:
        READ_TYPE.reset(token)
    except ValueError:
        pass


def check_write(tree: Any, tagged: bool, fmt: Format) -> None:
    """At a write whose caller declared the value's type (``get_or_load(...,
    type=...)``, a cached function's return annotation): ``Refused`` if that type
    could not read the value back (a model returned by a function declared
    ``-> dict``), which would make every read of the entry a miss."""
    tp = READ_TYPE.get()
    if tp is None:
        return
    value: Any = tree
    try:
        value, needs_type = lift(tree, fmt) if tagged else (tree, False)
        if value is None:
            return
        if not needs_type and not _is_structured(tp):
            if _shallow_fits(value, tp, 0):
                return
            raise _Mismatch(f"a {type(value).__name__} is not a {_type_name(tp)}")
        convert(value, tp)
    except DecodeError as exc:
        kind = type(value)
        raise Refused(
            f"{fmt.name} would store a value its declared type {_type_name(tp)} cannot "
            f"read back ({exc}): declare what the function returns (its class, or a "
            "union of its classes)",
            kind,
            "value",
        ) from None
