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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from cachewise.cli._demo import run_demo

        return run_demo(seconds=args.seconds, threads=args.threads, progress=not args.no_progress)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover
