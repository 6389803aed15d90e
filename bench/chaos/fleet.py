"""The processes a chaos run starts, restarts and always stops: a stack (``atas.common.stack``)
and the ATAS services (``atas serve ...``, the production commands), each on its own loopback port.

The stack's own ``up``/``down`` are used as they are; what a fault does to a datastore (a broker
stopped and started on the same port and data, Redis restarted empty, PostgreSQL restarted fast)
is handled here, and every process this module started itself is stopped by :meth:`Fleet.close`
before the stack's ``down`` — also after Ctrl-C or a failure (the caller wraps the run in
``try/finally``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from atas.common.stack import Stack, free_port, pid_alive, port_open, wait_for


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Service:
    """One ``atas serve <role>`` process on a fixed port; restarts keep the port (as a pod's Service)."""

    def __init__(self, role: str, name: str, env: dict[str, str], log_dir: Path):
        self.role, self.name, self.env = role, name, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "atas.cli.main", "serve", self.role],
                env={**self.env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        wait_for(lambda: self.healthy() or (self.proc is not None and self.proc.poll() is not None),
                 timeout, self.name, self.log_path)
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """A private stack plus 2 ingest, 1 query and 2 stream processes."""

    LAYOUT = (("ingest", 2), ("query", 1), ("stream", 2))

    def __init__(self, work_dir: Path | None = None):
        self.dir = work_dir or Path(tempfile.mkdtemp(prefix="atas-chaos-"))
        self.stack = Stack(self.dir / "stack")
        self.env: dict[str, str] = {}
        self.services: dict[str, list[Service]] = {}
        self._kafka: subprocess.Popen | None = None  # a broker this module restarted
        self._redis: subprocess.Popen | None = None  # a Redis this module restarted
        self._pg_restarted = False

    # ------------------------------------------------------------------ start
    def start(self, extra_env: dict[str, str]) -> None:
        say(f"starting a private stack in {self.stack.dir}")
        stack_env = self.stack.up()
        base = {k: v for k, v in os.environ.items()
                if k not in ("DB_URL", "REDIS_HOST", "REDIS_PORT", "KAFKA_BOOTSTRAP_SERVERS", "JWT_SECRET")}
        self.env = {**base, **stack_env, **extra_env}
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        for role, n in self.LAYOUT:
            self.services[role] = [Service(role, f"{role}-{i + 1}", self.env, logs) for i in range(n)]
        # As in production, a migration Job runs before the services (they do not migrate).
        with open(logs / "migrate.log", "ab") as log:
            subprocess.run([sys.executable, "-m", "atas.cli.main", "migrate"], env=self.env, stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=180)
        for s in self.all():
            s.start()
        for s in self.all():
            s.wait_healthy(180)
        say("processes up: " + ", ".join(f"{s.name}={s.port}" for s in self.all()))

    def all(self) -> list[Service]:
        return [s for group in self.services.values() for s in group]

    def urls(self, role: str) -> list[str]:
        return [s.url for s in self.services[role]]

    # ------------------------------------------------------------------ datastore faults
    def kafka_stop(self) -> None:
        pid = self._kafka.pid if self._kafka else self.stack.load_state()["kafka"]["pid"]
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self._kafka is not None:
            self._kafka.wait()

    def kafka_start(self) -> None:
        """The same broker again: same properties, port and log directory (no new format)."""
        state = self.stack.load_state()["kafka"]
        java = shutil.which("java") or "java"
        classpath = f"{self.stack.kafka_libs()}/*"
        with open(self.stack.dir / "kafka.log", "ab") as log:
            self._kafka = subprocess.Popen(
                [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.stack.dir / 'log4j2.yaml'}", "-cp", classpath,
                 "kafka.Kafka", str(self.stack.dir / "kafka.properties")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: port_open(state["port"]) or self._kafka.poll() is not None, 120, "Kafka restart",
                 self.stack.dir / "kafka.log")

    def redis_restart(self) -> None:
        """Kill Redis and start an empty one on the same port: its data is lost by design."""
        state = self.stack.load_state()["redis"]
        pid = self._redis.pid if self._redis else state["pid"]
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self._redis is not None:
            self._redis.wait()
        else:
            wait_for(lambda: not pid_alive(pid), 10, "Redis to die")
        exe = shutil.which("redis-server") or "redis-server"
        with open(self.stack.dir / "redis.log", "ab") as log:
            self._redis = subprocess.Popen(
                [exe, "--port", str(state["port"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--maxclients", "20000"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        wait_for(lambda: port_open(state["port"]), 30, "Redis restart")

    def postgres_restart(self) -> None:
        """``pg_ctl restart -m fast``: sessions are cut, in-flight transactions roll back."""
        pg = self.stack.load_state()["postgres"]
        self._pg_restarted = True
        # `-l`: the new postmaster must not inherit our pipes (we would wait for their EOF forever).
        subprocess.run([str(Path(pg["bin"]) / "pg_ctl"), "-D", pg["data"], "-l", str(self.stack.dir / "postgres.log"),
                        "-m", "fast", "-w", "-t", "60", "restart"], **_as(pg.get("user")),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=90)

    # ------------------------------------------------------------------ stop
    def close(self, *, keep: bool = False) -> None:
        for s in self.all():
            s.stop()
        for proc in (self._kafka, self._redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        pg = self.stack.load_state().get("postgres")
        if self._pg_restarted and pg and not pg.get("external"):
            # The recorded pid is the first postmaster's; stop the current one by its data folder.
            subprocess.run([str(Path(pg["bin"]) / "pg_ctl"), "-D", pg["data"], "-m", "fast", "-w", "stop"],
                           **_as(pg.get("user")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
        self.stack.down(purge=not keep)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def _as(user: str | None) -> dict:
    return {"user": user, "group": user, "extra_groups": []} if user else {}
