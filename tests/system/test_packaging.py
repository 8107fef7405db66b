"""What an install brings: the extras, what importing costs, errors naming extras,
``cachewise --version``. (Fresh-venv installs of each extra: ``make smoke-extras``.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cachewise

tomllib = pytest.importorskip("tomllib")  # 3.11+

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
# Extras for working on cachewise, not for running it.
NOT_RUNTIME = {"dev", "bench", "all"}

# Every optional dependency, by the name it is imported as.
FRAMEWORKS = [
    "redis",
    "hiredis",
    "sqlalchemy",
    "greenlet",
    "django",
    "msgpack",
    "orjson",
    "zstandard",
    "pydantic",
]


def _name(requirement: str) -> str:
    """``"sqlalchemy[asyncio]>=2.0"`` -> ``"sqlalchemy"``."""
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower()


def test_the_all_extra_is_every_runtime_extra_and_nothing_else() -> None:
    runtime = {req for extra, reqs in EXTRAS.items() if extra not in NOT_RUNTIME for req in reqs}
    # sqlalchemy-async includes the sqlalchemy extra: [all] needs only the larger one.
    runtime.discard("sqlalchemy>=2.0")
    assert set(EXTRAS["all"]) == runtime
    assert not {_name(r) for r in EXTRAS["all"]} & {"pytest", "mypy", "ruff", "cachetools"}


def test_the_sqlalchemy_extra_needs_no_greenlet_and_the_async_one_names_it() -> None:
    # Sync Sessions need SQLAlchemy alone; [asyncio] is what brings greenlet.
    assert EXTRAS["sqlalchemy"] == ["sqlalchemy>=2.0"]
    assert EXTRAS["sqlalchemy-async"] == ["sqlalchemy[asyncio]>=2.0"]


def test_the_package_version_is_the_project_version() -> None:
    assert cachewise.__version__ == PROJECT["version"]


def test_cachewise_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cachewise", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert done.stdout.strip() == f"cachewise {metadata.version('cachewise')}"


def test_cachewise_version_without_installed_metadata_falls_back_to_the_package() -> None:
    # As from a source tree on PYTHONPATH that was never installed.
    code = (
        "from importlib import metadata\n"
        "def missing(name):\n"
        "    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = missing\n"
        "from cachewise.cli import main\n"
        "main(['--version'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cachewise {cachewise.__version__}"


def test_importing_cachewise_imports_no_framework() -> None:
    """No optional dependency is imported unless its integration is, or the
    feature that needs it is used."""
    code = (
        "import sys\n"
        "import cachewise, cachewise.backends, cachewise.keys, cachewise.serialization\n"
        "import cachewise.invalidation, cachewise.testing, cachewise.cli\n"
        "import cachewise.integrations, cachewise.integrations.dbapi\n"
        "cache = cachewise.Cache()\n"
        "cache.set('k', {'v': 1})\n"
        "assert cache.get('k') == {'v': 1}\n"
        f"loaded = sorted({{m.partition('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


MISSING_DEPENDENCY = """
import sys
for name in {frameworks!r}:
    sys.modules[name] = None  # as if it were not installed
import cachewise
from cachewise import serialization

def message(call):
    try:
        call()
    except ImportError as exc:
        return str(exc)
    raise AssertionError(f"{{call}} did not raise ImportError")

def integration(name):
    return lambda: __import__("cachewise.integrations." + name)

print(message(lambda: cachewise.Cache.from_url("redis://127.0.0.1:1/0")))
print(message(lambda: cachewise.AsyncCache.from_url("redis://127.0.0.1:1/0")))
print(message(serialization.MsgpackSerializer))
print(message(serialization.ZstdCompressor))
print(message(integration("sqlalchemy")))
print(message(integration("django")))
"""


def test_every_missing_optional_dependency_is_an_import_error_naming_its_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MISSING_DEPENDENCY.format(frameworks=FRAMEWORKS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    redis, aredis, msgpack, zstd, sqlalchemy, django = done.stdout.splitlines()
    for text, package, extra in [
        (redis, "redis-py", "redis"),
        (aredis, "redis-py", "redis"),
        (msgpack, "msgpack", "msgpack"),
        (zstd, "zstandard", "zstd"),
        (sqlalchemy, "SQLAlchemy", "sqlalchemy"),
        (django, "Django", "django"),
    ]:
        assert package in text
        assert f"pip install 'cachewise[{extra}]'" in text
        assert extra in EXTRAS


def test_async_sqlalchemy_without_greenlet_names_the_async_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['greenlet'] = None  # as with [sqlalchemy] alone\n"
        "from cachewise import AsyncCache\n"
        "async def write(session, user_id): ...\n"
        "try:\n"
        "    AsyncCache().invalidates('user:{user_id}', after_commit='sqlalchemy')(write)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "greenlet" in done.stdout
    assert "pip install 'cachewise[sqlalchemy-async]'" in done.stdout


def test_make_smoke_extras_covers_every_extra() -> None:
    """The fresh-venv smoke has a program for every extra, so a new extra cannot
    ship untested."""
    script = (ROOT / "scripts" / "smoke_extras.py").read_text()
    for extra in EXTRAS:
        if extra not in {"dev", "bench"}:
            assert f'"{extra}":' in script, f"scripts/smoke_extras.py has no smoke for [{extra}]"
    assert shutil.which("make") is None or "smoke-extras:" in (ROOT / "Makefile").read_text()


def test_the_readme_install_section_lists_every_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    for extra in EXTRAS:
        if extra not in {"dev", "bench"}:
            assert f"| `{extra}` |" in install, f"README's Install section omits [{extra}]"
