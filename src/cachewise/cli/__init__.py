"""The ``cachewise`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cachewise`` command."""
    parser = argparse.ArgumentParser(
        prog="cachewise", description="cachewise: cache-aside done right."
    )
    parser.add_argument("--version", action="version", version=f"cachewise {version()}")
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
    imap.add_argument(
        "--django-settings",
        metavar="MODULE",
        help="a Django project's settings module: set DJANGO_SETTINGS_MODULE to it and "
        "call django.setup() before importing the target",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from cachewise.cli._demo import run_demo

        return run_demo(seconds=args.seconds, threads=args.threads, progress=not args.no_progress)
    if args.command == "invalidation-map":
        return _invalidation_map(args.target, args.output, args.title, args.django_settings)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


def version() -> str:
    """The installed distribution's version; the package's own ``__version__`` when
    it runs from a source tree that was never installed."""
    from importlib import metadata

    try:
        return metadata.version("cachewise")
    except metadata.PackageNotFoundError:
        from cachewise import __version__

        return __version__


def _invalidation_map(
    target: str, output: str | None, title: str, django_settings: str | None
) -> int:
    import os
    import sys

    from cachewise.invalidation import REGISTRY, load_target

    # The app's own modules are found as `python -m` finds them: the current
    # directory first on the path. A console script starts with its bin/ there
    # instead, where no app lives.
    cwd = os.getcwd()
    if not any(entry in ("", cwd) for entry in sys.path):
        sys.path.insert(0, cwd)
    try:
        if django_settings:
            _setup_django(django_settings)
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


def _setup_django(settings: str) -> None:
    """Configure Django from ``settings`` before the target imports its models."""
    import os

    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    try:
        import django  # type: ignore[import-untyped]  # no stubs shipped
    except ImportError:
        raise ImportError(
            "--django-settings needs Django: pip install 'cachewise[django]'"
        ) from None
    try:
        django.setup()
    except ImportError:
        raise
    except Exception as exc:  # ImproperlyConfigured and friends: a config problem
        raise ValueError(f"django.setup() with {settings}: {type(exc).__name__}: {exc}") from exc
