"""The invalidation map (registry, Markdown, CLI) and the key cardinality guard."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from cachewise import Cache, invalidation
from cachewise._frontends import _base
from cachewise._frontends._decorator import KeyCardinalityError
from cachewise.invalidation import ReadSpec, Registry, WriteSpec, load_target, shape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A fresh registry the decorators write to, in place of the process-wide one."""
    fresh = Registry()
    monkeypatch.setattr(_base, "REGISTRY", fresh)
    return fresh


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
    assert f"### `{__name__}.test_reads_and_writes_register_and_link.rename`" in text
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


# -- registry size and lifetime ------------------------------------------------------


class Owner:
    """Something a registration can be tied to (a decorated function, in real use)."""


def read_spec(function: str, namespace: str = "app") -> ReadSpec:
    return ReadSpec(function, namespace, "user:{id}", ("user:{id}",), 60.0, 0.0, 30.0)


def write_spec(function: str, namespace: str = "app") -> WriteSpec:
    return WriteSpec(function, namespace, ("user:{id}",), ("user:{id}",))


def functions(specs: Iterable[ReadSpec | WriteSpec]) -> list[str]:
    return [spec.function for spec in specs]


class CountingRead(ReadSpec):
    """A ``ReadSpec`` that counts the comparisons and hashes made of it."""

    __slots__ = ()
    operations = 0

    def __eq__(self, other: object) -> bool:
        CountingRead.operations += 1
        return ReadSpec.__eq__(self, other)

    def __hash__(self) -> int:
        CountingRead.operations += 1
        return ReadSpec.__hash__(self)


@pytest.mark.parametrize("owned", [False, True])
def test_registering_is_linear_in_the_number_of_specs(owned: bool) -> None:
    registry = Registry()
    owners = [Owner() for _ in range(10_000)]
    specs = [
        CountingRead(f"tenant{i}.profile", f"tenant{i}", "user:{id}", (), 60.0, 0.0, 30.0)
        for i in range(10_000)
    ]
    batches = []
    for start in range(0, 10_000, 2_000):
        CountingRead.operations = 0
        for i in range(start, start + 2_000):
            if owned:
                registry.add_read(specs[i], owner=owners[i])
            else:
                registry.add_read(specs[i])
        batches.append(CountingRead.operations)
    # A dict lookup and an insert per spec (a list scan was one comparison per
    # spec already registered: 2,000 x 8,000 for the last batch).
    assert batches[-1] <= 2 * batches[0], batches
    assert sum(batches) <= 3 * 10_000, batches
    assert len(registry.reads) == 10_000
    CountingRead.operations = 0
    registry.add_read(specs[5_000])  # de-duplicated, still O(1)
    assert CountingRead.operations <= 3
    assert len(registry.reads) == 10_000


def test_specs_leave_the_registry_when_every_owner_is_collected() -> None:
    registry = Registry()
    first, second = Owner(), Owner()
    registry.add_read(read_spec("shared"), owner=first)
    registry.add_read(read_spec("shared"), owner=second)  # one spec, two owners
    registry.add_read(read_spec("solo"), owner=first)
    registry.add_read(read_spec("forever"))  # no owner: for good
    registry.add_read(read_spec("pinned"), owner=first)
    registry.add_read(read_spec("pinned"))  # once registered for good, it stays
    registry.add_write(write_spec("write"), owner=first)
    assert functions(registry.reads) == ["shared", "solo", "forever", "pinned"]
    assert functions(registry.writes) == ["write"]

    del first
    gc.collect()
    assert functions(registry.reads) == ["shared", "forever", "pinned"]  # second lives
    assert functions(registry.writes) == []

    del second
    gc.collect()
    assert functions(registry.reads) == ["forever", "pinned"]


def test_a_cache_per_tenant_does_not_grow_the_registry() -> None:
    registry = Registry()
    for tenant in range(5_000):
        # An owner in a reference cycle, as a cache and its decorated functions are:
        # only the cycle collector frees it.
        owner = Owner()
        owner.self = owner  # type: ignore[attr-defined]
        registry.add_read(read_spec("profile", f"tenant{tenant}"), owner=owner)
        registry.add_write(write_spec("rename", f"tenant{tenant}"), owner=owner)
        del owner
    gc.collect()
    assert registry.reads == ()
    assert registry.writes == ()
    registry.add_read(read_spec("still", "works"), owner=Owner())  # collected at once
    assert registry.reads == ()


def test_a_spec_registered_again_after_clear_keeps_its_new_owner() -> None:
    registry = Registry()
    old, new = Owner(), Owner()
    spec = read_spec("f")
    registry.add_read(spec, owner=old)
    registry.clear()
    registry.add_read(spec, owner=new)
    del old
    gc.collect()
    assert functions(registry.reads) == ["f"]  # the old owner's death released only its own


def test_an_owner_must_be_weakly_referenceable() -> None:
    with pytest.raises(TypeError, match="weak references"):
        Registry().add_read(read_spec("f"), owner=(1, 2))


def test_the_map_keeps_what_a_factory_declared_and_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A factory builds caches and functions, declares them, and drops them all when
    # it returns (the demo's does): the map must still show them.
    fresh = Registry()
    monkeypatch.setattr(invalidation, "REGISTRY", fresh)
    (tmp_path / "tenant_factory.py").write_text(
        "from cachewise.invalidation import ReadSpec\n"
        "import cachewise.invalidation as invalidation\n"
        "class Owner: pass\n"
        "def build():\n"
        "    invalidation.REGISTRY.add_read(\n"
        "        ReadSpec('tenant_factory.profile', 'acme', 'user:{id}', (), 60.0, 0.0, 0.0),\n"
        "        owner=Owner(),\n"
        "    )\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tenant_factory", raising=False)
    load_target("tenant_factory:build")
    gc.collect()
    assert functions(fresh.reads) == ["tenant_factory.profile"]
    # Outside load_target (retaining()), owners count again.
    registry = Registry()
    with registry.retaining():
        registry.add_read(read_spec("kept"), owner=Owner())
    registry.add_read(read_spec("dropped"), owner=Owner())
    gc.collect()
    assert functions(registry.reads) == ["kept"]


def test_decorations_of_a_dropped_cache_leave_the_map(registry: Registry) -> None:
    def tenant_cache(name: str) -> None:
        cache = Cache(namespace=name)

        @cache.cached("user:{uid}")
        def profile(uid: int) -> int:
            return uid

        @cache.invalidates("user:{uid}")
        def rename(uid: int) -> None: ...

        profile(1)
        rename(1)
        cache.close()

    for i in range(50):
        tenant_cache(f"tenant{i}")
    gc.collect()
    assert registry.reads == ()
    assert registry.writes == ()


def _console_script() -> str:
    """The installed ``cachewise`` command (what users run), next to this Python."""
    script = shutil.which("cachewise", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cachewise console script is not installed next to this Python")
    return script


def _app_env() -> dict[str, str]:
    # No PYTHONPATH: the app's modules must be found from the directory the
    # command runs in, as `python -m` finds them.
    return {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    }


def test_the_cli_finds_the_app_modules_in_the_current_directory(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text("from cachewise import Cache\ncache = Cache(ttl=30)\n")
    # Imports a sibling module by its absolute name: needs the app directory on the path.
    (package / "users.py").write_text(
        "from myapp.store import cache\n"
        "@cache.cached('user:{uid}')\n"
        "def user(uid): ...\n"
        "@cache.invalidates('user:{uid}')\n"
        "def rename(uid, name): ...\n"
    )
    done = subprocess.run(
        [_console_script(), "invalidation-map", "myapp.users"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=_app_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "### `myapp.users.rename`" in done.stdout
    assert "| `myapp.users.user` | `user:{uid}` | key | 30 s | - |" in done.stdout


def test_the_map_says_when_each_write_invalidates(registry: Registry) -> None:
    """What the map declares is what runs: the decorator's after_commit form is the
    spec's, and the spec's is what the map says."""
    cache = Cache(namespace="app")

    @cache.invalidates("user:{user_id}")
    def on_return(user_id: int) -> None: ...

    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def with_session(session: object, user_id: int) -> None: ...

    @cache.invalidates("user:{user_id}", after_commit="dbapi")
    def with_connection(conn: object, user_id: int) -> None: ...

    forms = {write.function.rsplit(".", 1)[1]: write.after_commit for write in registry.writes}
    assert forms == {"on_return": "", "with_session": "sqlalchemy", "with_connection": "dbapi"}
    text = registry.to_markdown()
    sections = {part.split("`", 1)[0].rsplit(".", 1)[1]: part for part in text.split("### `")[1:]}
    assert "Invalidates, after it returns or raises (namespace `app`):" in sections["on_return"]
    assert (
        "Invalidates, after commit, when the transaction of its SQLAlchemy session argument "
        "commits" in sections["with_session"]
    )
    assert (
        "Invalidates, after commit, when the cachewise `transaction()` block"
        in (sections["with_connection"])
    )
    assert set(invalidation.AFTER_COMMIT) == {"sqlalchemy", "django", "dbapi"}
    cache.close()


DJANGO_SETTINGS = """
SECRET_KEY = "test"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
INSTALLED_APPS = ["shop"]
USE_TZ = True
"""


def test_the_cli_sets_up_a_django_project_with_django_settings(tmp_path: Path) -> None:
    pytest.importorskip("django")
    for package in ("mysite", "shop"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "mysite" / "settings.py").write_text(DJANGO_SETTINGS)
    # Defining a model needs django.setup() to have run.
    (tmp_path / "shop" / "models.py").write_text(
        "from django.db import models\n"
        "class Product(models.Model):\n"
        "    name = models.CharField(max_length=50)\n"
    )
    (tmp_path / "shop" / "caching.py").write_text(
        "from cachewise import Cache\n"
        "from shop.models import Product\n"
        "cache = Cache(ttl=60)\n"
        "@cache.cached('product:{pid}')\n"
        "def product(pid):\n"
        "    return Product.objects.get(pk=pid).name\n"
        "@cache.invalidates('product:{pid}', after_commit='django')\n"
        "def rename(pid, name):\n"
        "    Product.objects.filter(pk=pid).update(name=name)\n"
    )
    command = [_console_script(), "invalidation-map", "shop.caching"]
    done = subprocess.run(
        [*command, "--django-settings", "mysite.settings"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=_app_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "### `shop.caching.rename`" in done.stdout
    assert "Invalidates, after commit, when Django's transaction commits" in done.stdout
    assert "| `shop.caching.product` | `product:{pid}` | key | 60 s | - |" in done.stdout
    without = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=tmp_path, env=_app_env()
    )
    assert without.returncode != 0
    assert "settings are not configured" in without.stderr or "DJANGO_SETTINGS" in without.stderr


def test_a_write_whose_template_fills_to_a_reads_keys_reaches_it() -> None:
    """``item:{path}`` with "s/1" is the key of ``item:{shop}/{sku}`` with "s", "1"
    (attack round C): shapes alone missed it."""
    from cachewise.invalidation import ReadSpec, WriteSpec, _reached

    def read(key: str) -> ReadSpec:
        return ReadSpec("app.item", "app", key, (), 60.0, 0.0, 30.0)

    broad = WriteSpec("app.touch", "app", ("item:{path}",), ())
    narrow = WriteSpec("app.touch2", "app", ("item:{shop}/{sku}",), ())
    other = WriteSpec("app.other", "app", ("item:{id}:meta",), ())
    assert [r.key for r, _ in _reached(broad, [read("item:{shop}/{sku}")])] == ["item:{shop}/{sku}"]
    assert [r.key for r, _ in _reached(narrow, [read("item:{path}")])] == ["item:{path}"]
    # A colon is escaped inside fields: "item:{id}:meta" never fills to "item:{path}".
    assert _reached(other, [read("item:{path}")]) == []


# -- registry=: a map of one's own ----------------------------------------------------


def test_a_cache_given_a_registry_declares_there_and_not_in_the_global_one() -> None:
    own = Registry()
    cache = Cache(namespace="own-registry", registry=own)
    assert cache.registry is own

    @cache.cached("item:{item_id}")
    def item(item_id: int) -> str:
        return "x"

    @cache.invalidates("item:{item_id}")
    def rename_item(item_id: int) -> None:
        """Rename an item."""

    assert [r.key for r in own.reads] == ["item:{item_id}"]
    assert [w.function.rsplit(".", 1)[-1] for w in own.writes] == ["rename_item"]
    namespaces = {
        s.namespace for s in (*invalidation.REGISTRY.reads, *invalidation.REGISTRY.writes)
    }
    assert "own-registry" not in namespaces
    cache.close()


def test_a_cache_without_a_registry_declares_in_the_global_one() -> None:
    cache = Cache(namespace="global-registry")
    assert cache.registry is invalidation.REGISTRY

    @cache.cached("item:{item_id}")
    def item(item_id: int) -> str:
        return "x"

    assert any(r.namespace == "global-registry" for r in invalidation.REGISTRY.reads)
    cache.close()


def test_from_url_takes_a_registry_and_refuses_anything_else() -> None:
    own = Registry()
    cache = Cache.from_url("memory://", registry=own)
    assert cache.registry is own
    cache.close()
    with pytest.raises(TypeError, match="Registry"):
        Cache(registry={})  # type: ignore[arg-type]
