"""The ``cachewise`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cachewise`` command."""
    parser = argparse.ArgumentParser(
        prog="cachewise", description="cachewise: cache-aside done right."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the three-way demo (no cache, naive cache-aside, cachewise)"
    )
    demo.add_argument(
        "--seconds",
        type=float,
        default=4.0,
        help="length of the mixed-workload phase per mode (default 4)",
    )
    demo.add_argument("--threads", type=int, default=16, help="reader threads (default 16)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    imap = commands.add_parser(
        "invalidation-map",
        help="render which writes invalidate which cached reads, as Markdown",
    )
    imap.add_argument(
        "target",
        help="MODULE to import (its decorators declare reads and writes), or "
        "MODULE:FACTORY to import and call",
    )
    imap.add_argument("-o", "--output", help="write to this file instead of stdout")
    imap.add_argument("--title", default="Cache invalidation map", help="the page title")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from cachewise.cli._demo import run_demo

        return run_demo(seconds=args.seconds, threads=args.threads, progress=not args.no_progress)
    if args.command == "invalidation-map":
        return _invalidation_map(args.target, args.output, args.title)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


def _invalidation_map(target: str, output: str | None, title: str) -> int:
    import sys

    from cachewise.invalidation import REGISTRY, load_target

    try:
        load_target(target)
    except (ImportError, ValueError) as exc:
        print(f"cachewise invalidation-map: cannot load {target!r}: {exc}", file=sys.stderr)
        return 2
    text = REGISTRY.to_markdown(title) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0
