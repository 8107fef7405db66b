"""Key templates and stable default keys."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise.keys import KeyTemplate, encode_arg, function_key

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


def test_cache_key_hook() -> None:
    class Account:
        def __init__(self, pk: int) -> None:
            self.pk = pk

        def __cache_key__(self) -> str:
            return f"account-{self.pk}"

    assert encode_arg(Account(3)) == '"account-3"'
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
