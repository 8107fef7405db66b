"""Key templates and stable default keys."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise import Cache
from cachewise.keys import KeyTemplate, check_key_text, encode_arg, function_key

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_template_fields_and_format() -> None:
    template = KeyTemplate("user:{user.id}:{fmt}:{ids[0]}")
    assert template.fields == ("user", "fmt", "ids")

    class User:
        id = 7

    assert template.format({"user": User(), "fmt": "json", "ids": [3]}) == "user:7:json:3"


@pytest.mark.parametrize("bad", ["user:{}", "user:{0}", "user:{", "user:}"])
def test_bad_templates_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        KeyTemplate(bad)


def test_encode_arg_is_canonical() -> None:
    assert encode_arg({"b": 1, "a": [1, 2.0]}) == encode_arg({"a": [1, 2], "b": 1})
    assert encode_arg({3, 1, 2}) == encode_arg(frozenset({2, 3, 1}))
    assert encode_arg("1") != encode_arg(1)
    assert encode_arg(True) != encode_arg(1)
    assert encode_arg(None) == "null"
    assert encode_arg('a"b') == '"a\\"b"'
    assert encode_arg(b"\x00") == 'b"00"'


def _strict_eq(a: object, b: object) -> bool:
    """Equal, with equal types all the way down (False and 0 are different keys)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_strict_eq, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_strict_eq(a[k], b[k]) for k in a)
    return a == b


@given(JSONISH, JSONISH)
def test_equal_arguments_encode_equally_and_different_ones_differently(
    a: object, b: object
) -> None:
    if _strict_eq(a, b):
        assert encode_arg(a) == encode_arg(b)
    if encode_arg(a) == encode_arg(b):
        assert a == b


class Keyed:
    """An argument type with a ``__cache_key__`` hook, equal by class and key."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __cache_key__(self) -> str:
        return self.key

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key == self.key

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key))


class OtherKeyed(Keyed):
    """Another class whose hook returns the same strings."""


# Characters that delimit or escape the encoding, mixed into arbitrary text.
_TRICKY_TEXT = st.text(st.sampled_from('"\\:,{}[]() \tab') | st.characters(), max_size=6)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)  # nan != nan: see test_all_nans_share_a_key
    | st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, 1e16, 2**53])
    | _TRICKY_TEXT
    | st.binary(max_size=3)
    | st.builds(Keyed, _TRICKY_TEXT)
    | st.builds(OtherKeyed, _TRICKY_TEXT)
)
# What may sit in a set or be a dict key.
_HASHABLE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
ARGUMENTS = st.recursive(
    _HASHABLE | st.binary(max_size=3).map(bytearray),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_HASHABLE, inner, max_size=3)
        | st.sets(_HASHABLE, max_size=3)
        | st.frozensets(_HASHABLE, max_size=3)
    ),
    max_leaves=10,
)


def _normalised(value: object) -> object:
    """``value`` with the distinctions default keys ignore on purpose erased: lists
    and tuples (both become tuples), bytes and bytearray. Python's own equality
    already equates 1 and 1.0, and a set and a frozenset."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalised(item) for item in value)
    if isinstance(value, dict):
        return {_normalised(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return frozenset(_normalised(item) for item in value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


@given(st.lists(ARGUMENTS, min_size=2, max_size=8))
def test_arguments_that_share_an_encoding_are_equal(values: list[object]) -> None:
    # Every pair of the drawn values, not only two: collisions need similar values,
    # and a list of small ones holds many pairs.
    groups: dict[str, list[object]] = {}
    for value in values:
        groups.setdefault(encode_arg(value), []).append(value)
    for code, group in groups.items():
        first = _normalised(group[0])
        for other in group[1:]:
            assert _normalised(other) == first, (code, group[0], other)


@given(ARGUMENTS)
def test_an_argument_encodes_to_a_valid_key_the_same_every_time(value: object) -> None:
    code = encode_arg(value)
    assert code == encode_arg(_normalised(value))
    check_key_text(code)  # whitespace and control characters are escaped


def test_empty_containers_do_not_share_keys() -> None:
    assert encode_arg(set()) != encode_arg({})
    assert encode_arg(set()) != encode_arg([])
    assert encode_arg({}) != encode_arg([])
    # Equal in Python, so one key, as lists and tuples share one:
    assert encode_arg(set()) == encode_arg(frozenset())
    assert encode_arg([]) == encode_arg(())


def test_values_that_look_alike_do_not_share_keys() -> None:
    values: list[object] = [
        set(),
        {},
        [],
        "",
        b"",
        None,
        "null",
        0,
        "0",
        True,
        "true",
        "set{}",
        "{}",
        {""},
        {"": ""},
        {"a:b"},  # a set of a str with a colon...
        {"a": "b"},  # ...is not this dict
        {'"a":"b"'},
        {frozenset()},
        {frozenset(): frozenset()},
        [set()],
        [{}],
        [[]],
        {(): ()},
        {(1, 2)},
        {1, 2},
        [1, 2],
        "1,2",
        "a b",
        "a\\u0020b",  # the escape's text, written out, is not the escaped space
        "a\tb",
        'a"b',
        "a\\",
        Keyed("x"),
        OtherKeyed("x"),
        "x",
        1.5,
        "1.5",
        float("inf"),
        "inf",
    ]
    codes = [encode_arg(value) for value in values]
    assert len(set(codes)) == len(values), codes


def test_all_nans_share_a_key() -> None:
    # nan != nan, but f(nan) twice should hit the cache like any other call.
    assert encode_arg(float("nan")) == encode_arg(float("nan")) == "nan"


def test_subclasses_encode_as_their_base_value() -> None:
    class Loud(str):
        def replace(self, *args: object, **kwargs: object) -> str:
            return "LOUD"

    class Odd(float):
        def __repr__(self) -> str:
            return '"x"'

    assert encode_arg(Loud('a"b')) == encode_arg('a"b')
    assert encode_arg(Odd(1.5)) == encode_arg(1.5)


def test_default_keys_accept_strings_with_whitespace() -> None:
    cache = Cache()

    @cache.cached()
    def echo(text: str) -> str:
        CALLS.append(text)
        return text

    CALLS.clear()
    for text in ["a b", "a\tb", "a\u3000b", "a b", "a\tb"]:
        assert echo(text) == text
    assert CALLS == ["a b", "a\tb", "a\u3000b"]
    cache.close()


#: A module's list: a global, not a captured value, so not part of default keys.
CALLS: list[str] = []


def test_a_captured_list_is_refused_with_a_clear_error() -> None:
    cache = Cache()
    calls: list[str] = []
    with pytest.raises(TypeError, match=r"'calls' \(a list, whose contents can change"):

        @cache.cached()
        def echo(text: str) -> str:
            calls.append(text)
            return text

    cache.close()


def test_cache_key_hook() -> None:
    class Account:
        def __init__(self, pk: int) -> None:
            self.pk = pk

        def __cache_key__(self) -> str:
            return f"account-{self.pk}"

    name = f"{__name__}.test_cache_key_hook.<locals>.Account"
    assert encode_arg(Account(3)) == f'{name}("account-3")'
    # Not the str it returns: f(Account(3)) and f("account-3") are different calls.
    assert encode_arg(Account(3)) != encode_arg("account-3")
    with pytest.raises(TypeError, match="stable cache key"):
        encode_arg(object())


def test_long_default_keys_are_hashed_behind_a_readable_prefix() -> None:
    def f(blob: str) -> None: ...

    bound = inspect.signature(f).bind("x" * 1000)
    key = function_key("mod.f", bound)
    assert key.startswith("mod.f(#")
    assert len(key) < 60


def test_default_keys_are_the_same_in_another_process() -> None:
    code = (
        "import inspect; from cachewise.keys import function_key\n"
        "def f(a, b=2, *args, **kw): pass\n"
        "b = inspect.signature(f).bind(1, 2, 3, x={'z': {1, 2}}, y=None); b.apply_defaults()\n"
        "print(function_key('m.f', b))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
