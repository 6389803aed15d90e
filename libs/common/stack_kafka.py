"""The Kafka broker of the local stack: Apache Kafka in KRaft mode, single node, run with the
machine's Java 17 from jars Maven fetches from Maven Central once (cached under
``~/.cache/atas/kafka/<version>``)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

from .ports import free_port, listener_is
from .stack_proc import _CHILDREN, _PORT_ATTEMPTS, KAFKA_VERSION, StackError, _PortTaken, _running, _say, \
    kafka_cluster_id, wait_for


class KafkaServer:
    """The Kafka part of :class:`atas.common.stack.Stack` (which provides ``dir``, ``cache_dir``
    and ``_stop``)."""

    dir: Path
    cache_dir: Path

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
        for attempt in range(_PORT_ATTEMPTS):
            port, controller_port = free_port(), free_port()
            while controller_port == port:
                controller_port = free_port()
            try:
                return self._start_kafka(port, controller_port)
            except _PortTaken:
                _say(f"Kafka: port {port} or {controller_port} was taken meanwhile; trying others")
        raise StackError(f"Kafka: no free ports after {_PORT_ATTEMPTS} attempts")

    def _start_kafka(self, port: int, controller_port: int) -> dict:
        data = self.dir / "kafka"
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
        log_size = log_file.stat().st_size if log_file.exists() else 0
        broker = self.launch_kafka(props, log_file)
        _CHILDREN.append(broker)  # keep the handle: the broker outlives this call by design
        info = {"pid": broker.pid, "port": port, "controller_port": controller_port, "data": str(data)}
        try:
            wait_for(lambda: (listener_is(broker.pid, port) and listener_is(broker.pid, controller_port))
                     or broker.poll() is not None, 90, "Kafka", log_file)
            if broker.poll() is not None:
                with open(log_file, "rb") as f:
                    f.seek(log_size)
                    if b"Address already in use" in f.read():
                        raise _PortTaken(f"{port}/{controller_port}")
                raise StackError(f"Kafka exited during start-up (code {broker.returncode}); see {log_file}")
            self._kafka_ready(port, log_file)
        except BaseException:
            self._stop("kafka", info)
            raise
        return info

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

        # An event loop of its own, on a thread of its own: `up` may be called by code that runs
        # one already (asyncio.run cannot nest), and it blocks either way.
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(check())
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=run, name="atas-stack-kafka-ready", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------ down
