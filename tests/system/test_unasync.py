"""The generator of the sync flavour (scripts/unasync.py): its directives, and the
check that keeps every generated file fresh and every rule in use."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["unasync"] = module  # (dataclasses look their module up while defining)
    spec.loader.exec_module(module)
    return module


unasync = load()


def convert(text: str, rules: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, int]]:
    used: dict[str, int] = {}
    return unasync.convert(text, [*(rules or []), *unasync.COMMON], used), used


def test_common_rules() -> None:
    out, used = convert(
        "async def f(x: Awaitable[int]) -> None:\n"
        "    async with lock:\n"
        "        await g()\n"
        "        async for y in z:\n"
        "            pass\n"
    )
    assert out == (
        "def f(x: int) -> None:\n"
        "    with lock:\n"
        "        g()\n"
        "        for y in z:\n"
        "            pass\n"
    )
    assert used[r"\bawait\s+"] == 1


def test_directives() -> None:
    source = (
        "x = 1\n"
        "loop = get_loop()  # unasync: async-only\n"
        "# unasync: async-only\n"
        "check_loop()\n"
        "check_more()\n"
        "# unasync: end\n"
        "event = asyncio.Event()  # unasync: sync=event = threading.Event()\n"
        "    # unasync: sync-only\n"
        "    # with self._lock:\n"
        "    #     await self._settle()\n"
        "    # unasync: end\n"
        "y = 2\n"
    )
    out, _ = convert(source)
    assert out == (
        "x = 1\n"
        "event = threading.Event()\n"
        "    with self._lock:\n"
        "        self._settle()\n"  # uncommented lines go through the rules too
        "y = 2\n"
    )


def test_an_unterminated_block_is_an_error() -> None:
    with pytest.raises(SystemExit, match="without"):
        convert("# unasync: async-only\nx = 1\n")
    with pytest.raises(SystemExit, match="without"):
        convert("# unasync: sync-only\n# x = 1\n")
    with pytest.raises(SystemExit, match="holds comments"):
        convert("# unasync: sync-only\nx = 1\n# unasync: end\n")


def test_an_unused_target_rule_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "aio.py"
    source.write_text("async def f() -> None:\n    await g()\n")
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    target = unasync.Target("aio.py", "sync.py", ((r"\bAsyncThing\b", "Thing"),))
    with pytest.raises(SystemExit, match="unused"):
        unasync.generate(target, {})


def test_the_generated_files_are_fresh() -> None:
    """What `make lint` checks, here too: a generated file edited by hand, or a
    source changed without `make generate`, fails."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
