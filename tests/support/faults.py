"""Network faults for the resilience tests: a black-hole server and a TCP proxy.

``BlackHole``
    A TCP server on 127.0.0.1 that accepts every connection, reads (and drops)
    whatever the client sends, and never answers: a hung peer. Clients connect at
    once, then wait out their read timeout. It runs on one owned thread (it never
    has to be quick: it never answers).

``LatencyProxy(target_port)``
    A TCP proxy on 127.0.0.1 in front of a server the test started. It forwards
    both ways, and the test can change its behaviour at any moment:

    - ``proxy.delay = 0.4``: hold every chunk the server sends back for that many
      seconds (requests still reach the server at once, so each round trip takes
      ``delay`` longer: a slow server, or a slow way back);
    - ``proxy.blackhole()``: stop forwarding. Bytes from either side are dropped,
      never delivered later, and new connections are accepted but go nowhere (a
      partition: nothing sent meanwhile reaches the server);
    - ``proxy.refuse()``: reset every connection (RST), current and new;
    - ``proxy.reset_connections()``: reset the current connections once;
    - ``proxy.forward()``: back to normal, for new traffic.

    The proxy runs in a child process of its own (this file, run as a script),
    driven over a pipe: a proxy thread inside the test process would have to win
    the GIL against the very traffic it is slowing down, and on a loaded machine
    it could then add delays nobody asked for. Each command returns once the
    proxy has applied it. ``stop()`` ends the child and reaps it.

Both are context managers; ``stop()`` closes every socket and pipe they opened
(the suite runs with warnings as errors: nothing is left to the garbage
collector) and is safe to call twice. Neither talks to anything but 127.0.0.1,
and nothing here imports the test suite, so the child starts from a bare
interpreter.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from types import TracebackType

__all__ = ["LOOPBACK", "BlackHole", "LatencyProxy"]

#: The only address anything here binds to or connects to.
LOOPBACK = "127.0.0.1"
#: How long a service loop sleeps at most between two looks at its flags.
_TICK = 0.02
#: How long ``stop()`` waits for a thread or the child process.
_STOP_TIMEOUT = 5.0
#: How long the proxy child may take to start or to answer a command.
_COMMAND_TIMEOUT = 10.0
_CHUNK = 65536
_MODES = ("forward", "blackhole", "refuse")


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))  # the kernel picks a free port: no race to lose
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_with_reset(sock: socket.socket) -> None:
    """Close so that the peer sees a connection reset (RST), not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the black hole ------------------------------------------------------------------------


class BlackHole:
    """Accepts connections and never answers (see the module docstring)."""

    def __init__(self) -> None:
        self._listener = _listener()
        self.port: int = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.accepted = 0  # connections accepted so far
        self.received = 0  # bytes read (and dropped) so far

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: where a Redis client should point."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> BlackHole:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._thread = threading.Thread(
            target=self._run, name=f"black-hole:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._listener, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select(_TICK):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if sock is self._listener:
                            self._accept(selector)
                        else:
                            self._drain(selector, sock)
        except BaseException as exc:  # reported by stop(), never lost
            self._failure = exc
        finally:
            self._close_all()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._conns.append(conn)
        self.accepted += 1
        selector.register(conn, selectors.EVENT_READ)

    def _drain(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.received += len(data)
        if not data:  # the client gave up: forget it
            selector.unregister(sock)
            self._conns.remove(sock)
            sock.close()

    def _close_all(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._listener.close()

    def stop(self) -> None:
        """Stop the thread and close every socket; raise what the thread died of."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            self._close_all()
        else:
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{self!r}: its thread did not stop")
        failure, self._failure = self._failure, None
        if failure is not None:
            raise RuntimeError(f"{self!r}: its thread failed") from failure

    def __enter__(self) -> BlackHole:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BlackHole {LOOPBACK}:{self.port}>"


# -- the proxy: the handle in the test process ----------------------------------------------


class LatencyProxy:
    """A fault-injecting TCP proxy in front of ``target_port`` (see the module
    docstring). ``delay`` may be changed at any time; it applies to chunks the
    server sends from then on, and a connection's bytes always stay in order."""

    def __init__(self, target_port: int, *, delay: float = 0.0) -> None:
        self.target_port = target_port
        self._delay = float(delay)
        self._mode = "forward"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one command at a time
        self._reply = bytearray()
        self.port = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: the proxied server, for a Redis client."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> LatencyProxy:
        if self._proc is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), str(self.target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal is pytest's to handle
        )
        try:
            self.port = int(self._read_line().removeprefix("port "))
            if self._delay:
                self._command(f"delay {self._delay!r}")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def delay(self) -> float:
        """Seconds added to every chunk the server sends back."""
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._command(f"delay {float(seconds)!r}")
        self._delay = float(seconds)

    @property
    def mode(self) -> str:
        """``"forward"``, ``"blackhole"`` or ``"refuse"``."""
        return self._mode

    def forward(self) -> None:
        """Forward again (connections that lost bytes to a black hole stay broken;
        clients drop those on their timeout anyway)."""
        self._set_mode("forward")

    def blackhole(self) -> None:
        """Drop everything from now on, both ways; accept new connections silently."""
        self._set_mode("blackhole")

    def refuse(self) -> None:
        """Reset every connection, current and new, until ``forward()``."""
        self._set_mode("refuse")

    def hold_requests(self, marker: bytes, seconds: float) -> None:
        """From now on, hold each request that contains ``marker`` ``seconds`` on
        its way to the server (its connection's later bytes wait behind it): a
        lost packet, retransmitted late, while other connections are fine."""
        self._command(f"hold {marker.hex()} {float(seconds)!r}")

    def reset_connections(self) -> None:
        """Reset the current connections once (new ones are served as usual)."""
        self._command("reset")

    def stats(self) -> dict[str, int]:
        """``accepted`` connections, bytes ``dropped`` by black holes, ``resets``."""
        words = self._command("stats").split()
        return {name: int(value) for name, value in zip(words[::2], words[1::2], strict=True)}

    def _set_mode(self, mode: str) -> None:
        self._command(f"mode {mode}")
        self._mode = mode

    def _command(self, line: str) -> str:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise RuntimeError(f"{self!r} is not running")
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            reply = self._read_line()
        if reply.startswith("error"):
            raise RuntimeError(f"{self!r}: {line!r} failed: {reply}")
        return reply

    def _read_line(self) -> str:
        """One line from the child, within ``_COMMAND_TIMEOUT``."""
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        deadline = time.monotonic() + _COMMAND_TIMEOUT
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._reply:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise RuntimeError(f"{self!r}: no answer within {_COMMAND_TIMEOUT} s")
                data = os.read(fd, 4096)
                if not data:
                    raise RuntimeError(f"{self!r}: the proxy process exited{self._stderr()}")
                self._reply += data
        line, _, rest = bytes(self._reply).partition(b"\n")
        self._reply = bytearray(rest)
        return line.decode()

    def _stderr(self) -> str:
        proc = self._proc
        if proc is None or proc.stderr is None or proc.poll() is None:
            return ""
        return ": " + proc.stderr.read().decode(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        """End the child process (it closes its sockets), reap it, close the pipes."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        problem = ""
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # EOF on its stdin: the child stops
            try:
                code = proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                problem = "did not stop when asked"
            else:
                if code != 0:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    problem = f"exited with code {code}: {err.strip()[-2000:]}"
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if problem:
            raise RuntimeError(f"{self!r}: the proxy process {problem}")

    def __enter__(self) -> LatencyProxy:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LatencyProxy {LOOPBACK}:{self.port} -> {self.target_port}>"


# -- the proxy: the child process ------------------------------------------------------------


class _Direction:
    """Bytes on their way to ``dst``: ``held`` until due, then ``out``, then sent."""

    __slots__ = ("dst", "held", "out")

    def __init__(self, dst: socket.socket) -> None:
        self.dst = dst
        self.held: collections.deque[tuple[float, bytes]] = collections.deque()
        self.out = bytearray()


class _Link:
    """One proxied connection: the client's socket and ours to the server."""

    __slots__ = ("client", "closing", "down", "server", "up")

    def __init__(self, client: socket.socket, server: socket.socket | None) -> None:
        self.client = client
        # The client has gone with requests still held: as a kernel does with a
        # closed socket's unsent data, they are delivered, then the link closes.
        self.closing = False
        self.server = server  # None: accepted during a black hole, goes nowhere
        self.up = _Direction(server) if server is not None else None
        self.down = _Direction(client) if server is not None else None

    def sockets(self) -> list[socket.socket]:
        if self.closing:
            return [] if self.server is None else [self.server]
        return [self.client] if self.server is None else [self.client, self.server]


class _ProxyLoop:
    """The proxy itself: one selector loop over the listener, every link, and the
    command pipe (stdin). It runs until stdin closes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        # Requests holding this marker are held that long on their way to the
        # server (a lost packet TCP retransmits late), the rest of their
        # connection behind them.
        self.hold: tuple[bytes, float] | None = None
        self.mode = "forward"
        self.accepted = 0
        self.dropped = 0
        self.resets = 0
        self._listener = _listener()
        self._links: list[_Link] = []
        self._selector = selectors.DefaultSelector()
        self._commands = bytearray()
        self._done = False

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        try:
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(stdin, selectors.EVENT_READ)
            self._say(f"port {self._listener.getsockname()[1]}")
            while not self._done:
                timeout = self._flush()
                for key, events in self._selector.select(timeout):
                    if key.fileobj == stdin:
                        self._read_commands(stdin)
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._serve(key, events)
        finally:
            for link in self._links:
                for sock in link.sockets():
                    sock.close()
            self._listener.close()
            self._selector.close()

    @staticmethod
    def _say(line: str) -> None:
        os.write(sys.stdout.fileno(), line.encode() + b"\n")

    def _read_commands(self, stdin: int) -> None:
        try:
            data = os.read(stdin, 4096)
        except BlockingIOError:
            return
        if not data:  # the test process closed the pipe (or died): stop
            self._done = True
            return
        self._commands += data
        while b"\n" in self._commands:
            line, _, rest = bytes(self._commands).partition(b"\n")
            self._commands = bytearray(rest)
            self._say(self._apply(line.decode().split()))

    def _apply(self, words: list[str]) -> str:
        if words[:1] == ["delay"] and len(words) == 2:
            self.delay = float(words[1])
        elif words[:1] == ["hold"] and len(words) == 3:
            self.hold = (bytes.fromhex(words[1]), float(words[2]))
        elif words[:1] == ["mode"] and len(words) == 2 and words[1] in _MODES:
            self.mode = words[1]
            if self.mode == "refuse":
                self._reset_all()
        elif words == ["reset"]:
            self._reset_all()
        elif words == ["stats"]:
            return f"accepted {self.accepted} dropped {self.dropped} resets {self.resets}"
        else:
            return f"error: unknown command {' '.join(words)!r}"
        return "ok"

    def _reset_all(self) -> None:
        for link in list(self._links):
            self._drop(link, reset=True)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        if self.mode == "refuse":
            self.resets += 1
            _close_with_reset(conn)
            return
        server: socket.socket | None = None
        if self.mode == "forward":
            try:
                # Loopback: a connect succeeds or is refused at once.
                server = socket.create_connection((LOOPBACK, self.target_port), timeout=1.0)
            except OSError:
                self.resets += 1
                _close_with_reset(conn)  # the server is down: so is the proxy
                return
            server.setblocking(False)
        conn.setblocking(False)
        link = _Link(conn, server)
        self._links.append(link)
        for sock in link.sockets():
            self._selector.register(sock, selectors.EVENT_READ, link)

    def _serve(self, key: selectors.SelectorKey, events: int) -> None:
        link = key.data
        sock = key.fileobj
        assert isinstance(link, _Link)
        assert isinstance(sock, socket.socket)
        if link not in self._links:
            return  # dropped earlier in this round
        if events & selectors.EVENT_WRITE:
            self._send(link, sock)
        if events & selectors.EVENT_READ and link in self._links:
            self._receive(link, sock)

    def _receive(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # one side closed: close the other side too
            up = link.up
            if sock is link.client and up is not None and (up.held or up.out):
                self._selector.unregister(sock)
                sock.close()
                link.closing = True  # after the held requests (see _flush)
                return
            self._drop(link, reset=False)
            return
        if self.mode != "forward" or link.up is None or link.down is None:
            self.dropped += len(data)
            return
        if sock is link.client:
            held = self.hold is not None and self.hold[0] in data
            if not held and not link.up.held:
                link.up.out += data  # requests reach the server at once
                self._want_write(link, link.up.dst)
                return
            due = time.monotonic() + (self.hold[1] if held and self.hold else 0.0)
            if link.up.held:  # in order behind a held request
                due = max(due, link.up.held[-1][0])
            link.up.held.append((due, data))
            return
        due = time.monotonic() + self.delay
        if link.down.held:  # never overtake a chunk held for longer
            due = max(due, link.down.held[-1][0])
        link.down.held.append((due, data))

    def _flush(self) -> float:
        """Release the held chunks that are due; how long until the next one."""
        now = time.monotonic()
        wait = _TICK
        for link in list(self._links):
            if link.closing and link.up is not None and not (link.up.held or link.up.out):
                self._drop(link, reset=False)
                continue
            for way in (link.down, link.up):
                if way is None or (link.closing and way is link.down):
                    continue
                if self.mode != "forward":
                    self.dropped += sum(len(data) for _, data in way.held)
                    way.held.clear()
                    continue
                while way.held and way.held[0][0] <= now:
                    way.out += way.held.popleft()[1]
                if way.out:
                    self._want_write(link, way.dst)
                if way.held:
                    wait = min(wait, max(way.held[0][0] - now, 0.0))
        return wait

    def _send(self, link: _Link, sock: socket.socket) -> None:
        assert link.up is not None
        assert link.down is not None
        direction = link.up if sock is link.up.dst else link.down
        if self.mode != "forward":
            self.dropped += len(direction.out)
            direction.out.clear()
        if direction.out:
            try:
                sent = sock.send(direction.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(link, reset=False)
                return
            del direction.out[:sent]
        if not direction.out:
            self._selector.modify(sock, selectors.EVENT_READ, link)

    def _want_write(self, link: _Link, sock: socket.socket) -> None:
        self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, link)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        self._links.remove(link)
        for sock in link.sockets():
            self._selector.unregister(sock)
            if reset:
                _close_with_reset(sock)
            else:
                sock.close()
        if reset:
            self.resets += 1


if __name__ == "__main__":  # the proxy child: faults.py TARGET_PORT
    _ProxyLoop(int(sys.argv[1])).run()
