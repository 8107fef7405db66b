"""Run cachewise's benchmarks in one process and one run: ``make bench``.

Each benchmark is a module in this directory with a ``NAME`` and a
``run(quick: bool) -> dict`` function that prints its own report and returns its
figures (JSON-serialisable). To add one (e.g. Redis backends), write the module and
add its name to ``BENCHMARKS`` below.

All figures land in ``.bench/results.json`` (git-ignored), next to the interpreter
and package versions they were measured with. Targets are reported as PASS/FAIL and
never turn into a failing exit status; only a benchmark that crashes does.

    python benchmarks/run.py              # everything
    python benchmarks/run.py --quick      # fewer iterations: a smoke test
    python benchmarks/run.py --only herd  # one benchmark (repeatable)
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUTPUT = ROOT / ".bench" / "results.json"

# Module names, run in this order. Each must define NAME and run(quick) -> dict.
BENCHMARKS: list[str] = [
    "bench_hits",
    "bench_hits_many",
    "bench_herd",
    "bench_redis_hits",
    "bench_redis_herd",
    "bench_tags",
    "load_pool",
]

# Reported with the results so figures can be compared across runs.
PACKAGES = (
    "cachewise",
    "cachetools",
    "theine",
    "cashews",
    "aiocache",
    "dogpile.cache",
    "redis",
    "hiredis",
    "orjson",
)


def _prepare_path() -> None:
    # Benchmark modules import each other's helpers by plain name.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        import cachewise  # noqa: F401
    except ImportError:  # not installed: use the source tree
        sys.path.insert(0, str(ROOT / "src"))


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _names() -> dict[str, str]:
    """Short benchmark name -> module name."""
    return {module.removeprefix("bench_"): module for module in BENCHMARKS}


def main(argv: list[str] | None = None) -> int:
    names = _names()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(names),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the JSON figures (default: .bench/results.json)",
    )
    args = parser.parse_args(argv)
    _prepare_path()

    selected = [name for name in names if not args.only or name in args.only]
    versions = _versions()
    print(
        f"cachewise benchmarks{' (quick)' if args.quick else ''}: "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print("versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in versions.items()))

    results: dict[str, Any] = {}
    failed: list[str] = []
    started = time.perf_counter()
    for name in selected:
        print(f"\n=== {name} " + "=" * max(0, 70 - len(name)))
        began = time.perf_counter()
        try:
            module = importlib.import_module(names[name])
            figures = module.run(args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            results[name] = {"error": traceback.format_exc()}
            continue
        figures["seconds"] = round(time.perf_counter() - began, 2)
        results[name] = figures

    elapsed = time.perf_counter() - started
    summary = [
        {"benchmark": name, **target}
        for name, figures in results.items()
        for target in figures.get("targets", [])
    ]
    print(f"\n=== summary {'=' * 62}")
    for target in summary:
        passed = target.get("passed")
        label = "SKIPPED" if passed is None else "PASS" if passed else "FAIL"
        print(f"  {label:7}  {target['benchmark']}: {target.get('summary', target['subject'])}")
    for name in failed:
        print(f"  CRASHED  {name} (see the traceback above)")

    document = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "seconds": round(elapsed, 2),
        "results": results,
    }
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\n{len(selected)} benchmark(s) in {elapsed:.1f} s; figures written to {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
