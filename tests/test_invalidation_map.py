"""The invalidation map (registry, Markdown, CLI) and the key cardinality guard."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cachewise import Cache
from cachewise._frontends._decorator import KeyCardinalityError
from cachewise.invalidation import REGISTRY, Registry, shape

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registry() -> Any:
    saved = (list(REGISTRY.reads), list(REGISTRY.writes))
    REGISTRY.clear()
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.reads.extend(saved[0])
    REGISTRY.writes.extend(saved[1])


def test_templates_match_by_shape() -> None:
    assert shape("user:{id}:profile") == shape("user:{user_id}:profile")
    assert shape("user:{id}") != shape("user:{id}:profile")


def test_reads_and_writes_register_and_link(registry: Registry) -> None:
    cache = Cache(namespace="app", ttl=60, stale_ttl=30)

    @cache.cached("user:{user_id}:profile", tags=["user:{user_id}"])
    def profile(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @cache.cached("user:{user_id}:posts", ttl=10, tags=["user:{user_id}"])
    def posts(user_id: int) -> list[int]:
        return []

    @cache.cached("leaderboard", ttl=5)
    def leaderboard() -> list[int]:
        return []

    @cache.invalidates("user:{uid}:profile", tags=["user:{uid}"])
    def rename(uid: int, name: str) -> None:
        """Rename a user."""

    assert len(registry.reads) == 3
    assert len(registry.writes) == 1
    reached = {
        read.function.rsplit(".", 1)[1]: how
        for read, how in registry.reads_reached_by(registry.writes[0])
    }
    assert reached == {"profile": "key", "posts": "tag `user:{}`"}
    assert [r.key for r in registry.unreached_reads()] == ["leaderboard"]
    text = registry.to_markdown()
    assert (
        "### `tests.test_invalidation_map.test_reads_and_writes_register_and_link.rename`" in text
    )
    assert "Rename a user." in text
    assert "| 10 s | 30 s |" in text  # posts: its own ttl, the cache's stale window
    assert "## Reads no write invalidates" in text
    assert "`leaderboard`" in text
    cache.close()


def test_the_cli_renders_a_module_to_markdown(tmp_path: Path) -> None:
    module = tmp_path / "shop_cache.py"
    module.write_text(
        "from cachewise import Cache\n"
        "cache = Cache(namespace='shop', ttl=120)\n"
        "@cache.cached('product:{pid}', tags=['product:{pid}'])\n"
        "def product(pid): ...\n"
        "@cache.invalidates(tags=['product:{pid}'])\n"
        "def update_price(pid, price):\n"
        "    '''Change a product's price.'''\n"
    )
    out = tmp_path / "map.md"
    subprocess.run(
        [sys.executable, "-m", "cachewise", "invalidation-map", "shop_cache", "-o", str(out)],
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT / 'src'}"},
    )
    text = out.read_text()
    assert "### `shop_cache.update_price`" in text
    assert "| `shop_cache.product` | `product:{pid}` | tag `product:{}` | 120 s | - |" in text


def test_the_cli_reports_an_unknown_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachewise", "invalidation-map", "no_such_module_here"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no_such_module_here" in result.stderr


def test_the_demo_ships_its_generated_map() -> None:
    shipped = (ROOT / "docs" / "cache-invalidation.md").read_text()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachewise",
            "invalidation-map",
            "cachewise.cli._demo:invalidation_map_app",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == shipped, "regenerate docs/cache-invalidation.md (make docs)"


def test_invalidates_checks_its_templates_against_the_function(registry: Registry) -> None:
    cache = Cache()
    with pytest.raises(ValueError, match="user_id"):

        @cache.invalidates("user:{user_id}")
        def write(uid: int) -> None: ...

    with pytest.raises(ValueError, match="at least one"):
        cache.invalidates()(lambda: None)
    cache.close()


# -- cardinality guard ---------------------------------------------------------------


def test_cardinality_guard_warns_once_and_keeps_caching(registry: Registry, caplog: Any) -> None:
    cache = Cache()
    calls: list[int] = []

    @cache.cached("item:{i}", max_keys=3)
    def item(i: int) -> int:
        calls.append(i)
        return i

    with caplog.at_level(logging.WARNING, logger="cachewise"):
        for i in range(6):
            item(i)
        for i in range(6):
            item(i)
    assert calls == list(range(6))  # still cached past the limit
    warnings = [r for r in caplog.records if "distinct keys" in r.getMessage()]
    assert len(warnings) == 1
    cache.close()


def test_cardinality_guard_can_bypass_or_raise(registry: Registry) -> None:
    cache = Cache()
    calls: list[int] = []

    @cache.cached("item:{i}", max_keys=2, on_max_keys="bypass")
    def item(i: int) -> int:
        calls.append(i)
        return i

    for _ in range(2):
        for i in range(4):
            item(i)
    assert calls == [0, 1, 2, 3, 2, 3]  # keys past the limit are never cached

    @cache.cached("strict:{i}", max_keys=1, on_max_keys="raise")
    def strict(i: int) -> int:
        return i

    strict(1)
    strict(1)
    with pytest.raises(KeyCardinalityError, match="strict"):
        strict(2)
    cache.close()
