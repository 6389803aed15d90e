"""The local stack cleans up after itself: a failed start leaves no server running, a start works
from inside an event loop, and a port taken between its choice and the bind is not mistaken for
our server. Real servers (PostgreSQL from the wheel, redis-server, a Kafka broker), each in a
folder of its own, never the session's shared stack."""

from __future__ import annotations

import socket

import pytest

from atas.common import stack as stack_module
from atas.common.ports import listener_is
from atas.common.stack import Stack, StackError, pid_alive

pytestmark = [pytest.mark.pg, pytest.mark.redis, pytest.mark.kafka]


class RecordingStack(Stack):
    """A stack that remembers every state it saved: the pids of what it started along the way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved: list[dict] = []

    def _save_state(self, state: dict) -> None:
        self.saved.append({k: dict(v) if isinstance(v, dict) else v for k, v in state.items()})
        super()._save_state(state)


def test_a_failed_kafka_start_stops_the_postgres_and_redis_it_started(tmp_path):
    # Kafka fails for real: its jar cache is marked complete but holds no jars, so the storage
    # tool cannot even load (what a broken ~/.cache/atas would do).
    cache = tmp_path / "cache"
    libs = cache / "kafka" / stack_module.KAFKA_VERSION / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").touch()
    stack = RecordingStack(tmp_path / "stack", cache_dir=cache)
    with pytest.raises(StackError, match="Kafka storage"):
        stack.up(["postgres", "redis", "kafka"])
    started = {name: info["pid"] for state in stack.saved for name, info in state.items()
               if name in ("postgres", "redis") and isinstance(info, dict) and info.get("pid")}
    assert set(started) == {"postgres", "redis"}, stack.saved
    assert not [name for name, pid in started.items() if pid_alive(pid)], "a server outlived the failed start"
    assert "postgres" not in stack.load_state() and "redis" not in stack.load_state()
    stack.down(purge=True)
    assert not stack._root_pg_home().exists(), "purge left the PostgreSQL data behind"


def test_as_root_no_folder_above_the_stack_changes_its_permissions(tmp_path):
    """PostgreSQL runs as a system user when the stack runs as root; its data then lives in a folder
    of that user under /var/lib/atas instead of opening the stack folder and its parents to others."""
    import os

    if os.geteuid() != 0:
        pytest.skip("only a root stack runs PostgreSQL as another user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    folders = [private, *private.parents]
    before = {p: p.stat().st_mode for p in folders}
    stack = Stack(private / "stack")
    try:
        stack.up(["postgres"])
        info = stack.load_state()["postgres"]
        assert pid_alive(info["pid"]) and listener_is(info["pid"], info["port"])
        assert {p: p.stat().st_mode for p in folders} == before
        assert stack.dir.stat().st_mode & 0o077 == 0, "the stack folder (its JWT secret) is open to others"
    finally:
        stack.down(purge=True)
    assert not stack._root_pg_home().exists()


async def test_a_stack_starts_from_inside_a_running_event_loop(tmp_path):
    """What the query and stream benches used to do: Stack.up with a loop running (it blocks, and
    must not try to nest asyncio.run for its Kafka readiness check)."""
    stack = Stack(tmp_path / "stack")
    try:
        env = stack.up(["kafka"])
        info = stack.load_state()["kafka"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{info['port']}"
        assert listener_is(info["pid"], info["port"])
    finally:
        stack.down(purge=True)
    assert not pid_alive(info["pid"])


def test_a_port_taken_before_the_bind_is_retried_and_the_server_is_ours(tmp_path, monkeypatch):
    """Two `atas stack up`s in parallel: the other one's server binds the port this one chose
    first. The stack must not take that server for its own."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = stack_module.free_port
    ports = iter([taken])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(ports, None) or real_free_port())
    stack = Stack(tmp_path / "stack")
    try:
        env = stack.up(["redis"])
        info = stack.load_state()["redis"]
        assert int(env["REDIS_PORT"]) == info["port"] != taken
        assert listener_is(info["pid"], info["port"])
    finally:
        stack.down(purge=True)
        squatter.close()
    assert not pid_alive(info["pid"])
