"""Keys built from real arguments: free text in templates and default keys, and
the parameters that are not data (sessions, requests, connections) left out."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise import Cache
from cachewise.keys import ArgFilter, KeyTemplate, check_key, quote, unquote
from tests.conftest import Facade
from tests.support import patient

# Patient client timeouts for this module's Redis tests (see support/patient.py).
redis_url = patient.redis_url
redis_cluster_url = patient.redis_cluster_url

FREE_TEXT = [
    "red shoes",
    "grüße 世界",
    "a/b/c",
    "x:y:z",
    "{braces}",
    "100%",
    "tab\there",
    "line\nbreak",
    "",
    "\u3000ideographic space",
    "k" * 1000 + " tail",
]


#: What the loaders saw (module-level: a default key may not capture a list).
CALLS: list[str] = []


@pytest.mark.parametrize("text", FREE_TEXT)
@pytest.mark.parametrize("template", ["search:{q}", None])
def test_any_str_argument_caches_with_a_template_or_a_default_key(
    make_cache: Any, template: str | None, text: str
) -> None:
    cache: Facade = make_cache()
    CALLS.clear()
    calls = CALLS

    def search(q: str) -> str:
        CALLS.append(q)
        return f"results for {q}"

    f = cache.cached(template)(search)
    assert cache.call(f, text) == f"results for {text}"
    assert cache.call(f, text) == f"results for {text}"
    assert calls == [text], "the second call must hit"
    assert cache.call(f.invalidate, text) is True
    assert cache.call(f, text) == f"results for {text}"
    assert calls == [text, text], "invalidate must delete the entry the call used"


# Pinned: keys are the same in every process and every version (a changed
# encoding would orphan every entry a running fleet wrote).
PINNED = [
    ("search:{q}", {"q": "red shoes"}, "search:red%20shoes"),
    ("search:{q}", {"q": "a:b"}, "search:a%3Ab"),
    ("search:{q}", {"q": "100%"}, "search:100%25"),
    ("search:{q}", {"q": "grüße/世界{}"}, "search:grüße/世界{}"),
    ("f/{a}/{b}", {"a": "x/y", "b": "z"}, "f/x%2Fy/z"),
    ("u:{id}", {"id": 7}, "u:7"),
    ("d:{q}", {"q": "\n"}, "d:%0A"),
]


@pytest.mark.parametrize(("template", "values", "key"), PINNED)
def test_template_fields_are_percent_encoded_as_documented(
    template: str, values: dict[str, Any], key: str
) -> None:
    assert KeyTemplate(template).format(values) == key
    assert check_key(key) == key


@given(st.text(), st.text())
def test_two_different_fillings_of_a_template_never_share_a_key(a: str, b: str) -> None:
    for template in ("s:{a}:{b}", "{a}/{b}", "{a}.{b}", "x{a}-{b}y"):
        t = KeyTemplate(template)
        key = t.format({"a": a, "b": b})
        if key:
            check_key(key)
        # The split point is recoverable: another split of the same text differs.
        if a:
            assert t.format({"a": a[:-1], "b": a[-1:] + b}) != key


@given(st.text())
def test_quote_round_trips_any_text_and_makes_a_valid_key(text: str) -> None:
    quoted = quote(text)
    assert unquote(quoted) == text
    if quoted:
        assert check_key(quoted) == quoted
    assert ":" not in quoted
    assert " " not in quoted


def test_a_strict_key_error_names_the_escape_helper() -> None:
    with Cache() as cache, pytest.raises(ValueError, match=r"cachewise\.keys\.quote"):
        cache.get("search:red shoes")
    with Cache() as cache:
        cache.set("search:" + quote("red shoes"), 1)
        assert cache.get("search:red%20shoes") == 1


def test_templates_with_attributes_and_format_specs_are_quoted_too() -> None:
    import datetime as dt

    class Box:
        name = "a b"

    t = KeyTemplate("k:{when:%Y %m}:{box.name}")
    assert t.format({"when": dt.date(2024, 1, 2), "box": Box()}) == "k:2024%2001:a%20b"


# -- parameters that are not data ----------------------------------------------------


def test_an_sqlalchemy_session_is_left_out_of_default_keys() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine("sqlite://")
    CALLS.clear()
    with Cache() as cache, Session(engine) as one, Session(engine) as two:

        @cache.cached()
        def search(q: str, db: Session) -> str:
            CALLS.append(q)
            return q.upper()

        assert search("red shoes", one) == search("red shoes", two) == "RED SHOES"
        assert CALLS == ["red shoes"]
        assert "db=" not in search.key_for("red shoes", one)
    engine.dispose()


def test_an_async_session_and_a_dbapi_connection_are_left_out() -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    session = AsyncSession(engine)
    conn = sqlite3.connect(":memory:")
    try:
        with Cache() as cache:

            @cache.cached()
            def f(x: int, db: AsyncSession, conn: sqlite3.Connection) -> int:
                return x

            key = f.key_for(1, session, conn)
            assert key.endswith("(x=1)")
    finally:
        conn.close()


def test_starlette_requests_and_background_tasks_are_left_out() -> None:
    from starlette.background import BackgroundTasks
    from starlette.requests import Request

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with Cache() as cache:

        @cache.cached()
        def endpoint(item_id: int, request: Request, tasks: BackgroundTasks) -> int:
            return item_id

        key = endpoint.key_for(3, request, BackgroundTasks())
        assert key.endswith("(item_id=3)")


def test_ignore_takes_parameter_names_and_types() -> None:
    class Tracer:
        pass

    class SpecialTracer(Tracer):
        pass

    with Cache() as cache:

        @cache.cached(ignore=("request_id", Tracer))
        def f(x: int, request_id: str = "", tracer: object = None) -> int:
            return x

        assert f.key_for(1, "r1", SpecialTracer()) == f.key_for(1, "r2", Tracer())
        assert f.key_for(1) != f.key_for(2)


def test_ignore_names_must_be_parameters_and_items_names_or_types() -> None:
    with Cache() as cache:
        with pytest.raises(ValueError, match="not a parameter"):
            cache.cached(ignore=("nope",))(lambda x: x)
        with pytest.raises(TypeError, match="names and types"):
            cache.cached(ignore=(3,))(lambda x: x)  # type: ignore[arg-type]


def test_an_unknown_object_argument_is_still_refused_with_advice() -> None:
    class Thing:
        pass

    with Cache() as cache:

        @cache.cached()
        def f(x: Thing) -> int:
            return 1

        with pytest.raises(TypeError, match=r"ignore=|__cache_key__"):
            f(Thing())


def test_the_arg_filter_memo_is_bounded() -> None:
    arg_filter = ArgFilter()
    for index in range(ArgFilter._MEMO_MAX + 50):
        arg_filter.skips_value(type(f"T{index}", (), {})())
    assert len(arg_filter._memo) <= ArgFilter._MEMO_MAX
