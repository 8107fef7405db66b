"""The long run: ``python -m tests.history --seconds N [--seed S] [--only PATTERN]``.

Runs every configuration (or those whose name matches an ``--only`` glob or
substring) for ``N`` seconds each, in a worker process of its own, against Redis
servers and a Redis Cluster it starts on free loopback ports (and stops at the
end), then prints one line per configuration and the details of every failure.
Exit status 1 if any configuration saw a violation, a hang or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import sys
from dataclasses import asdict

from tests.history.configs import CONFIGS, Config
from tests.history.runner import Outcome, fault_target, run_isolated
from tests.support.redis_servers import RedisClusterProcess, RedisServer


def _selected(patterns: list[str]) -> list[Config]:
    if not patterns:
        return list(CONFIGS)
    return [
        config
        for config in CONFIGS
        if any(p in config.name or fnmatch.fnmatchcase(config.name, p) for p in patterns)
    ]


class _Servers:
    """Redis servers for the run, started on first need and stopped at the end."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._shared: RedisServer | None = None
        self._cluster: RedisClusterProcess | None = None

    def redis_url(self) -> str:
        if self._shared is None:
            self._shared = self._stack.enter_context(RedisServer())
        self._shared.flushall()
        return self._shared.url

    def cluster_url(self) -> str:
        if self._cluster is None:
            self._cluster = self._stack.enter_context(RedisClusterProcess())
        self._cluster.flushall()
        return self._cluster.url


def _run(config: Config, servers: _Servers, args: argparse.Namespace, seed: int) -> Outcome:
    seconds, deadline = args.seconds, args.deadline
    if config.fault is not None:
        # A private server: the fault kills it.
        with RedisServer() as server, fault_target(config, server) as (proxied, fault):
            return run_isolated(
                config, seconds=seconds, seed=seed, deadline=deadline, url=proxied, fault=fault
            )
    url: str | None = None
    if config.backend == "redis":
        url = servers.redis_url()
    elif config.backend == "cluster":
        url = servers.cluster_url()
    return run_isolated(config, seconds=seconds, seed=seed, deadline=deadline, url=url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.history", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each configuration N times (seeds S, S+1...)"
    )
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN")
    parser.add_argument("--deadline", type=float, default=10.0, help="per call, in seconds")
    parser.add_argument("--list", action="store_true", help="list the configurations")
    parser.add_argument("--json", metavar="PATH", help="also write every outcome here")
    args = parser.parse_args(argv)
    configs = _selected(args.only)
    if args.list or not configs:
        print("\n".join(config.name for config in configs) or "no configuration matches")
        return 0 if configs else 2
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        servers = _Servers(stack)
        for config in configs:
            for seed in range(args.seed, args.seed + args.repeat):
                outcome = _run(config, servers, args, seed)
                outcomes.append(outcome)
                print(outcome.summary() + (f" seed {seed}" if args.repeat > 1 else ""), flush=True)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    total = sum(o.operations for o in outcomes)
    print(
        f"\n{len(outcomes)} configurations, {total} operations, "
        f"{sum(o.violations for o in outcomes)} violations, "
        f"{sum(len(o.hangs) for o in outcomes)} hangs, {len(failed)} failed"
    )
    for outcome in failed:
        print("\n" + outcome.describe())
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(outcome) for outcome in outcomes], out, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
