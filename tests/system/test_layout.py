"""Issue 11's structural promises, as tests that fail when someone breaks them:
no hidden module-level state, lint before tests in CI, a reason for every ignored
lint rule, and a tests/ tree that mirrors src/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "cachewise"

_MUTABLE_CALLS = frozenset(
    {
        "dict",
        "set",
        "list",
        "deque",
        "defaultdict",
        "OrderedDict",
        "WeakSet",
        "WeakValueDictionary",
        "WeakKeyDictionary",
        "count",
        "Lock",
        "RLock",
        "Registry",
    }
)

#: Module-level mutable state, each with the reason it is process-wide (the
#: comment at its definition says more). Adding one means adding it here, with
#: its reason: state shared between caches belongs in a CacheGroup or a Registry.
PROCESS_WIDE = {
    "_forksafe._objects": "what every fork must reset (a fork is per process)",
    "_forksafe._held": "locks held across a fork (per process)",
    "_frontends._base._token_counter": "lease tokens unique in this process",
    "_frontends._base._cache_ids": "cache ids unique in this process",
    "_frontends._cycles._lock": "the waits-for graph of this process's threads and tasks",
    "_frontends._cycles._waiting": "the waits-for graph",
    "_frontends._cycles._loop_blocked_by": "the waits-for graph",
    "_frontends._cycles._lease_holders": "the waits-for graph, through leases",
    "_frontends._group._groups": "the groups the interpreter's exit settles",
    "_typed._enums": "registered enums: a fact about classes",
    "_typed._enum_round_trips": "registered enums",
    "_typed._enums_lock": "registered enums",
    "_typed._warned_untyped": "log-once bookkeeping",
    "_typed._warned_mismatch": "log-once bookkeeping",
    "_typed._expected": "reader types whose enums are registered (a fact about classes)",
    "backends._breaker._common._classes": "breaker classes per capability set (a type cache)",
    "backends._failover._watches": "the process's view of each Sentinel service's master",
    "backends._failover._watches_lock": "the Sentinel watches",
    "backends._redis._common._fence_tables": "sets this process left on the wire, per server",
    "backends._redis._common._fence_tables_lock": "the fence tables",
    "integrations.dbapi._active": "open transaction blocks, per connection object",
    "invalidation.REGISTRY": "the default Registry (registry= gives a cache its own)",
    "keys._claimed": "default key names derived from code",
    "keys._claimed_lock": "the claimed key names",
}

#: Constant tables built at import (a module may fill one in while it loads).
TABLES = frozenset(
    {
        "_typed._SCALARS",
        "_typed._LIFTERS",
        "_typed._SEQUENCES",
        "_url._checks._CLUSTER_OPTIONS",
        "_url._options._RESERVED_CLIENT_OPTIONS",
        "_url._options._READERS",
        "backends._breaker._async.CAPABILITIES",
        "backends._breaker._sync.CAPABILITIES",
        "backends._breaker._common.PLAIN",
        "invalidation.AFTER_COMMIT",
        "testing.conformance.VALUES",
        "testing.conformance.KEYS",
    }
)


def module_state() -> set[str]:
    found: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name) or target.id == "__all__":
                continue
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.SetComp))
            if isinstance(value, ast.Call):
                func = value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                mutable = name in _MUTABLE_CALLS
            if mutable:
                found.add(f"{module}.{target.id}")
    return found


def test_no_hidden_module_level_state() -> None:
    found = module_state()
    unexplained = found - set(PROCESS_WIDE) - TABLES
    assert not unexplained, (
        f"module-level mutable state with no reason on record: {sorted(unexplained)} "
        "(shared between caches? put it in a CacheGroup; else add it to PROCESS_WIDE)"
    )
    gone = (set(PROCESS_WIDE) | TABLES) - found
    assert not gone, f"listed but no longer there (drop them from the lists): {sorted(gone)}"


def test_ci_lints_before_it_tests() -> None:
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps.index("make lint") < steps.index("make test"), steps


def test_every_ignored_lint_rule_carries_a_reason() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    block = text[text.index("[tool.ruff.lint]") :]
    block = block[: block.index("\n[", 1)] if "\n[tool.mypy" in block else block
    ignore = block[block.index("ignore = [") : block.index("]", block.index("ignore = ["))]
    rules = re.findall(r'"([A-Z]+[0-9]+)",?(.*)', ignore)
    assert rules
    for rule, rest in rules:
        assert "#" in rest, f"ignored rule {rule} has no reason on its line"
    per_file = text[text.index("[tool.ruff.lint.per-file-ignores]") :].split("\n[", 1)[0]
    lines = per_file.splitlines()[1:]
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert i > 0, f"no reason for: {line}"
            assert lines[i - 1].lstrip().startswith("#"), f"no reason for: {line}"


def test_tests_mirror_src() -> None:
    expected = {"core", "frontends", "backends", "integrations", "cli", "system"}
    test_dirs = {p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").exists()}
    assert expected <= test_dirs, sorted(test_dirs)
    stray = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    assert not stray, f"tests outside the tree that mirrors src/: {stray}"
