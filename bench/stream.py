"""Benchmark of the stream service: N live SSE clients on one process, events ingested at a steady rate.

    scripts/bench stream                      # 2,000 clients, 20 events/s for 60 s
    scripts/bench stream --clients 10000      # 10,000 clients held by one process
    scripts/bench stream --rate 50 --duration 30

Starts one ``atas serve stream`` and one ``atas serve ingest`` (fresh database, Kafka topic and
Redis prefix of its own), connects ``--clients`` SSE clients (raw sockets, HTTP/1.0), then creates
executions through the ingest API at ``--rate`` per second: each is one ``execution.started`` event
that travels ingest → PostgreSQL outbox → relay → Kafka → bridge → Redis Stream + PUBLISH → fan-out
→ every client.

Clients: ``--probes`` (100) read every event as it arrives, in a process of their own; their
receive times are the latency samples. The others (``--workers`` processes) also receive every
event — the server writes each event to each socket all the same — but read only every
``--lazy-ms`` (2000), so that on a small machine the clients' own CPU does not become the
measurement. ``--lazy-ms 0`` makes every client an eager reader.

The client processes stand in for other machines, so by default they run under ``SCHED_IDLE``
(``--client-priority idle``): they use only CPU the servers leave idle, instead of preempting the
stream process in the middle of a fan-out. Their samples are the kernel's receive times, which do
not depend on when a client process gets scheduled. ``--client-priority normal`` lets them compete.

Reported (last stdout line, one JSON object):

* ``e2e_p50_ms`` / ``e2e_p99_ms``: ingest request sent → event read by a probe client (and
  ``e2e_p999_ms`` / ``e2e_max_ms``, where one-off pauses such as a full GC collection show);
* ``fanout_p50_ms`` / ``fanout_p99_ms``: Redis PUBLISH → event read by a probe client. The publish instant
  is when a raw subscriber in this process received the publication (the floor below, ~0.1 ms,
  is the error of that proxy);
* ``redis_pubsub_p99_ms``: the floor, raw Pub/Sub of timestamped messages to one subscriber in
  this process, during the same run;
* ``rss_mb`` of the stream process with all clients connected, ``kb_per_conn`` its growth per client;
* ``delivered`` (events read / events × clients) and ``lost_clients`` (connections that dropped).

Servers come from ``eval "$(atas stack env)"`` or a private stack in a temporary folder. Progress
goes to stderr. The file-descriptor limit is raised to its hard limit (children inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROJECT = "bench"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
BUCKET_MS = 0.1  # histogram resolution of the latency percentiles


def say(message: str) -> None:
    print(f"[bench stream] {message}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------ client worker


class _Head:
    """Decoder of the two envelope fields the clients key latencies on."""

    def __init__(self):
        import msgspec

        class Head(msgspec.Struct):
            execution_id: str
            type: str

        self.decode = msgspec.json.Decoder(Head).decode


class SseConn(asyncio.Protocol):
    """One raw SSE client: HTTP/1.0 request (no chunked framing), records receive time per event."""

    def __init__(self, request: bytes, worker: "Worker"):
        self.request = request
        self.worker = worker
        self.buf = b""
        self.headers_done = False
        self.connected = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.worker.lazy and self.headers_done:
            self.transport.pause_reading()  # the worker resumes every connection every lazy_s
        self.feed(data, time.time(), None)

    def feed(self, data: bytes, now: float, stamp: float | None) -> None:
        """Parse what arrived at ``now`` (in this process) and ``stamp`` (in the kernel, probes)."""
        self.buf += data
        if not self.headers_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buf[:self.buf.find(b"\r\n")]
            self.buf = self.buf[end + 4:]
            self.headers_done = True
            if b" 200 " not in status:
                self.worker.errors.append(status.decode(errors="replace"))
        if self.worker.lazy and self.connected.done():
            # Read late on purpose: only counted (for `delivered`), no latency sample. Counting the
            # complete events' data lines in one pass keeps these clients' CPU off the server's core.
            end = self.buf.rfind(b"\n\n")
            if end >= 0:
                self.worker.lazy_received += self.buf.count(b"\ndata: ", 0, end) + self.buf.startswith(b"data: ")
                self.buf = self.buf[end + 2:]
            return
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                return
            block, self.buf = self.buf[:end], self.buf[end + 2:]
            if not self.connected.done():
                self.connected.set_result(True)
            i = block.find(b"data: ")
            if i >= 0:
                if self.worker.lazy:
                    self.worker.lazy_received += 1
                else:
                    key = self.worker.head.decode(block[i + 6:]).execution_id
                    self.worker.record(key, now if stamp is None else stamp)
                    self.worker.record(key, now, app=True)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_result(False)
        self.worker.lost += 1


class ProbeConn(SseConn):
    """An eager SSE client that takes each read's kernel receive time (``SO_TIMESTAMPNS``).

    The latency samples are then the moment the bytes reached the client's host, as for a client
    on another machine, and not also when this process got scheduled on a busy 2-core VM (the
    process-side receive time is reported too, as ``*_app_*``).
    """

    _ANC = socket.CMSG_SPACE(16)

    async def open(self, host: str, port: int) -> "ProbeConn":
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await loop.sock_connect(sock, (host, port))
        self.sock = sock
        self.transport = _SockHandle(sock)
        await loop.sock_sendall(sock, self.request)
        loop.add_reader(sock.fileno(), self._readable)
        return self

    def _readable(self) -> None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(65536, self._ANC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.connection_lost(None)
            return
        stamp = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                stamp = sec + nsec / 1e9
        self.feed(data, time.time(), stamp)


class _SockHandle:
    """What the worker needs of a transport (close), for a raw probe socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class Worker:
    """A client process. Probe workers read every event as it comes and their receive times are the
    latency samples; lazy workers read every ``lazy_s`` (still every event, in fewer reads) so
    that the clients' own CPU does not dominate a 2-core machine and skew the probes."""

    def __init__(self, host: str, port: int, clients: int, token: str, lazy_s: float = 0.0):
        self.host, self.port, self.clients, self.token = host, port, clients, token
        self.lazy = lazy_s > 0
        self.lazy_s = lazy_s
        self.conns: list[SseConn] = []
        self.head = _Head()
        self.received: dict[str, array] = {}
        self.received_app: dict[str, array] = {}
        self.errors: list[str] = []
        self.lazy_received = 0
        self.lost = 0
        self.transports = []

    def record(self, key: str, t: float, *, app: bool = False) -> None:
        """A probe's receive time of event ``key`` (kernel stamp, or ``app``: this process's)."""
        store = self.received_app if app else self.received
        times = store.get(key)
        if times is None:
            times = store[key] = array("d")
        times.append(t)

    async def connect(self) -> int:
        loop = asyncio.get_running_loop()
        request = (f"GET /v1/stream?project={PROJECT}&types=execution.started HTTP/1.0\r\n"
                   f"Host: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                   f"Accept: text/event-stream\r\n\r\n").encode()
        sem = asyncio.Semaphore(100)  # connect in waves: the server's accept backlog is finite

        async def one():
            async with sem:
                if self.lazy:
                    transport, proto = await loop.create_connection(lambda: SseConn(request, self),
                                                                    self.host, self.port)
                else:
                    proto = await ProbeConn(request, self).open(self.host, self.port)
                    transport = proto.transport
                self.transports.append(transport)
                self.conns.append(proto)
                return await proto.connected

        results = await asyncio.gather(*(one() for _ in range(self.clients)), return_exceptions=True)
        ok = sum(1 for r in results if r is True)
        for r in results:
            if isinstance(r, BaseException):
                self.errors.append(f"{type(r).__name__}: {r}")
        return ok

    def received_count(self) -> int:
        return self.lazy_received + sum(len(v) for v in self.received.values())

    def histograms(self, refs: dict[str, list[float]]) -> dict:
        """{kind: {bucket: count}} of client receive − reference time, for kinds e2e and fanout
        (references: ingest request, PUBLISH) at the kernel's receive time and, ``*_app``, at this
        process's."""
        out: dict[str, dict[int, int]] = {}
        for suffix, received in (("", self.received), ("_app", self.received_app)):
            for kind, i in (("e2e", 0), ("fanout", 1)):
                hist = out.setdefault(kind + suffix, {})
                for key, times in received.items():
                    base = refs.get(key, [None, None])[i]
                    if base is None:
                        continue
                    for t in times:
                        b = int(max(0.0, (t - base) * 1000) / BUCKET_MS)
                        hist[b] = hist.get(b, 0) + 1
        return out


async def worker_main(args) -> int:
    raise_nofile()
    if args.client_priority == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    worker = Worker(args.host, args.port, args.clients, args.token, args.lazy_s)
    ok = await worker.connect()
    print(json.dumps({"ready": ok, "errors": worker.errors[:5]}), flush=True)

    async def resume_all() -> None:
        while True:
            await asyncio.sleep(worker.lazy_s)
            for conn in worker.conns:
                if not conn.closed:
                    conn.transport.resume_reading()

    resumer = asyncio.create_task(resume_all()) if worker.lazy else None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            return 1
        cmd, _, arg = line.partition(" ")
        if cmd == "count":
            print(json.dumps({"received": worker.received_count(),
                              "lost": worker.lost}), flush=True)
        elif cmd == "refs":
            refs = json.loads(Path(arg).read_text())
            hist = worker.histograms(refs)
            result = {"received": worker.received_count(), "lost": worker.lost, **hist,
                      "errors": worker.errors[:5]}
            Path(arg + f".{os.getpid()}").write_text(json.dumps(result))
            print(json.dumps({"done": True}), flush=True)
            if resumer is not None:
                resumer.cancel()
            for t in worker.transports:
                t.close()
            return 0


# ------------------------------------------------------------------------------ coordinator


def servers_env() -> tuple[dict[str, str], object | None]:
    from atas.common.stack import env_or_private_stack

    return env_or_private_stack("atas-bench-stream")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu_times() -> list[int]:
    """The host's aggregate CPU times (/proc/stat, clock ticks): user nice system idle iowait irq
    softirq steal ..."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def host_cpu_share(before: list[int], after: list[int]) -> tuple[float, float]:
    """(busy %, steal %) of all cores between two host_cpu_times() readings."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return round(100 * (total - idle - delta[7]) / total, 1), round(100 * delta[7] / total, 1)


def server_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative buckets {le: count} of a Prometheus histogram from /metrics text."""
    out = {}
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return out


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding quantile q (coarse, as Prometheus buckets are)."""
    total = buckets.get(float("inf"), 0)
    if not total:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return None if le == float("inf") else round(le * 1000, 1)
    return None


def percentile(hist: dict[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return round((bucket + 0.5) * BUCKET_MS, 2)
    return None


class Floor:
    """Raw Redis Pub/Sub to one subscriber, in this process, while the benchmark runs."""

    def __init__(self, redis_settings, channel: str):
        self.settings = redis_settings
        self.channel = channel
        self.latencies: list[float] = []

    async def run(self, stop: asyncio.Event, rate: float) -> None:
        from atas.common.redis import create_redis

        pub = create_redis(self.settings)
        sub_client = create_redis(self.settings)
        pubsub = sub_client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            await pubsub.get_message(timeout=2)

            async def receive():
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if msg:
                        self.latencies.append((time.time() - float(msg["data"])) * 1000)

            rx = asyncio.create_task(receive())
            while not stop.is_set():
                await pub.publish(self.channel, repr(time.time()))
                try:
                    await asyncio.wait_for(stop.wait(), 1 / rate)
                except TimeoutError:
                    pass
            await asyncio.sleep(0.2)
            rx.cancel()
            await asyncio.gather(rx, return_exceptions=True)
        finally:
            await pubsub.aclose()
            await sub_client.aclose()
            await pub.aclose()


class PublishWatch:
    """A raw subscriber on the project's channel: when each event was published (execution id → t)."""

    def __init__(self, redis_settings, channel: str):
        self.settings = redis_settings
        self.channel = channel
        self.seen: dict[str, float] = {}
        self.head = _Head()

    async def run(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        from atas.common.redis import create_redis

        client = create_redis(self.settings)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            await pubsub.get_message(timeout=2)
            ready.set()
            while not stop.is_set():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if msg:
                    now = time.time()
                    payload = msg["data"].partition(b"\n")[2]
                    self.seen[self.head.decode(payload).execution_id] = now
        finally:
            await pubsub.aclose()
            await client.aclose()


async def bench(args, env: dict[str, str]) -> dict:
    import aiohttp

    from atas.common.auth import mint_token
    from atas.common.bus import KafkaBus
    from atas.common.config import KafkaSettings, RedisSettings, parse_db_url
    from atas.common.db import create_database, drop_database
    from tests.helpers import ServiceProcess

    nofile = raise_nofile()
    if nofile < args.clients + 1000:
        say(f"warning: RLIMIT_NOFILE is {nofile}; {args.clients} clients may not fit")
    run_id = uuid.uuid4().hex[:8]
    secret = env.get("JWT_SECRET") or "bench-secret-" + "x" * 32
    base_dsn = parse_db_url(env["DB_URL"], env.get("DB_USER"), env.get("DB_PASSWORD"))
    db_name = f"atas_bench_stream_{run_id}"
    dsn = await create_database(base_dsn, db_name, migrate=True)
    topic = f"atas.bench.stream.{run_id}"
    kafka = KafkaSettings(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], topic=topic)
    await KafkaBus(kafka).ensure_topic(partitions=3)
    prefix = f"atas:bench:{run_id}:"
    proc_env = {**env, "DB_URL": dsn, "KAFKA_TOPIC": topic, "JWT_SECRET": secret, "LOG_LEVEL": "warning",
                "STREAM_REDIS_PREFIX": prefix, "STREAM_BRIDGE_GROUP": f"bench-bridge-{run_id}",
                "STREAM_MAX_CONNECTIONS": str(args.clients + 100), "INGEST_RELAY_POLL_SECONDS": "1"}
    proc_env.pop("DB_USER", None)
    proc_env.pop("DB_PASSWORD", None)
    logs = Path(tempfile.mkdtemp(prefix="atas-bench-stream-logs-"))
    # --bridge-process: the Kafka→Redis bridge runs in a stream process of its own that serves no
    # clients (STREAM_BRIDGE_ENABLED=false on the one that does), as a deployment would split them.
    stream = ServiceProcess(["serve", "stream"], {**proc_env, "STREAM_BRIDGE_ENABLED": "false"}
                            if args.bridge_process else proc_env, logs, "stream")
    bridge = ServiceProcess(["serve", "stream"], proc_env, logs, "bridge") if args.bridge_process else stream
    ingest = ServiceProcess(["serve", "ingest"], proc_env, logs, "ingest")
    workers: list[subprocess.Popen] = []
    token = mint_token(secret, subject="bench", scopes=["ingest:write", "stream:read"], projects=[PROJECT],
                       ttl_seconds=3600)
    redis_settings = RedisSettings(host=env["REDIS_HOST"], port=int(env.get("REDIS_PORT", "6379")),
                                   password=env.get("REDIS_PASSWORD"))
    try:
        await asyncio.gather(*(asyncio.to_thread(p.wait_healthy, 60) for p in {stream, bridge, ingest}))
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while "atas_stream_bridge_assigned 1.0" not in await (await http.get(bridge.url + "/metrics")).text():
                    await asyncio.sleep(0.2)
            rss_before = rss_kb(stream.proc.pid)
            say(f"stream pid {stream.proc.pid}: {rss_before / 1024:.1f} MB before clients; logs in {logs}")

            probes = min(args.probes, args.clients)
            bulk = args.clients - probes
            per = [(bulk // args.workers + (1 if i < bulk % args.workers else 0), args.lazy_ms / 1000)
                   for i in range(args.workers)]
            started = time.perf_counter()
            # The server starts every fan-out round at a random client, so the probes, wherever the
            # server keeps them, sample every position of the fan-out order over the run.
            for n, lazy_s in [(probes, 0.0)] + per:
                if n <= 0:
                    continue
                workers.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--host", "127.0.0.1", "--port", str(stream.port),
                     "--clients", str(n), "--token", token, "--lazy-s", str(lazy_s),
                     "--client-priority", args.client_priority],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            ready = 0
            for w in workers:
                line = await asyncio.to_thread(w.stdout.readline)
                info = json.loads(line)
                ready += info["ready"]
                if info["errors"]:
                    say(f"client errors: {info['errors']}")
            say(f"{ready}/{args.clients} clients connected in {time.perf_counter() - started:.1f}s")
            await asyncio.sleep(2)  # let the server settle (allocations of the first writes)
            rss_after = rss_kb(stream.proc.pid)

            stop = asyncio.Event()
            watch = PublishWatch(redis_settings, f"{prefix}c:{PROJECT}")
            watch_ready = asyncio.Event()
            watch_task = asyncio.create_task(watch.run(watch_ready, stop))
            await watch_ready.wait()
            floor = Floor(redis_settings, f"{prefix}floor")
            floor_task = asyncio.create_task(floor.run(stop, args.rate))

            sent: dict[str, float] = {}
            total = int(args.rate * args.duration)
            say(f"ingesting {total} events at {args.rate}/s through the ingest API")
            t0 = time.perf_counter()
            cpu0 = cpu_s(stream.proc.pid)
            steal0 = host_cpu_times()
            load0 = os.getloadavg()[0]
            headers = {"Authorization": f"Bearer {token}"}
            pending = set()

            async def create(exe: str) -> None:
                async with http.post(f"{ingest.url}/v1/executions", headers=headers,
                                     json={"id": exe, "project": PROJECT, "name": "bench"}) as r:
                    if r.status not in (200, 201):
                        say(f"ingest answered {r.status}: {await r.text()}")

            for i in range(total):
                due = t0 + i / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                exe = str(uuid.uuid4())
                sent[exe] = time.time()
                task = asyncio.create_task(create(exe))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            stream_cpu_pct = round(100 * (cpu_s(stream.proc.pid) - cpu0) / (time.perf_counter() - t0), 1)
            host_busy_pct, host_steal_pct = host_cpu_share(steal0, host_cpu_times())
            expected = total * ready
            deadline = time.monotonic() + 30
            while True:  # until every client has every event, or 30 s (then `delivered` < 1 says so)
                counts = []
                for w in workers:
                    w.stdin.write("count\n")
                    w.stdin.flush()
                    counts.append(json.loads(await asyncio.to_thread(w.stdout.readline)))
                got = sum(c["received"] for c in counts)
                if got >= expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            say(f"clients read {got} of {expected} event copies")
            rss_loaded = rss_kb(stream.proc.pid)
            metrics_text = await (await http.get(stream.url + "/metrics")).text()
            server = server_histogram(metrics_text, "atas_stream_fanout_latency_seconds")
            bridge_text = await (await http.get(bridge.url + "/metrics")).text()
            lag = {k: float(v) for k, v in re.findall(r"^atas_stream_bridge_lag_seconds_(sum|count) (\S+)$",
                                                      bridge_text, re.M)}
            stop.set()
            await asyncio.gather(watch_task, floor_task)

            refs_path = logs / "refs.json"
            refs_path.write_text(json.dumps({exe: [t, watch.seen.get(exe)] for exe, t in sent.items()}))
            merged = {"e2e": {}, "fanout": {}, "e2e_app": {}, "fanout_app": {}}
            received = lost = 0
            for w in workers:
                w.stdin.write(f"refs {refs_path}\n")
                w.stdin.flush()
                await asyncio.to_thread(w.stdout.readline)
                result = json.loads(Path(f"{refs_path}.{w.pid}").read_text())
                received += result["received"]
                lost += result["lost"]
                for kind in merged:
                    for b, c in result[kind].items():
                        merged[kind][int(b)] = merged[kind].get(int(b), 0) + c
            floor_sorted = sorted(floor.latencies)
            # Upstream share of e2e: ingest request → PUBLISH (ingest, outbox relay, Kafka, bridge).
            upstream = sorted((watch.seen[exe] - t) * 1000 for exe, t in sent.items() if exe in watch.seen)
            return {
                "clients": ready,
                "probes": probes,
                "bridge_process": args.bridge_process,
                "events": total,
                "rate_per_s": args.rate,
                "e2e_p50_ms": percentile(merged["e2e"], 0.50),
                "e2e_p99_ms": percentile(merged["e2e"], 0.99),
                "e2e_p999_ms": percentile(merged["e2e"], 0.999),
                "e2e_max_ms": percentile(merged["e2e"], 1.0),
                "fanout_p50_ms": percentile(merged["fanout"], 0.50),
                "fanout_p99_ms": percentile(merged["fanout"], 0.99),
                # the same at the probe process's receive time (adds its scheduling on this VM)
                "e2e_app_p99_ms": percentile(merged["e2e_app"], 0.99),
                "fanout_app_p99_ms": percentile(merged["fanout_app"], 0.99),
                "upstream_p50_ms": round(upstream[len(upstream) // 2], 2) if upstream else None,
                "upstream_p99_ms": round(upstream[int(0.99 * (len(upstream) - 1))], 2) if upstream else None,
                "redis_pubsub_p99_ms": round(floor_sorted[int(0.99 * (len(floor_sorted) - 1))], 2)
                if floor_sorted else None,
                # the server's own view, event time → written to its last client (bucket bounds)
                "server_fanout_p50_le_ms": bucket_quantile(server, 0.5),
                "server_fanout_p99_le_ms": bucket_quantile(server, 0.99),
                # Kafka record timestamp → Redis write, mean per bridge batch
                "bridge_lag_avg_ms": round(1000 * lag["sum"] / lag["count"], 1) if lag.get("count") else None,
                "rss_mb": round(rss_loaded / 1024, 1),
                "kb_per_conn": round((rss_after - rss_before) / max(ready, 1), 1),
                "delivered": round(received / expected, 4) if expected else None,
                "stream_cpu_pct": stream_cpu_pct,  # of one core, while ingesting
                "host_cpus": os.cpu_count(),
                "host_load_1m": round(max(load0, os.getloadavg()[0]), 2),
                # of all cores while ingesting: busy (every process), and stolen by the hypervisor
                "host_busy_pct": host_busy_pct,
                "host_steal_pct": host_steal_pct,
                "client_priority": args.client_priority,
                "lost_clients": lost,
            }
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()
            for f in (w.stdin, w.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        stream.stop()
        bridge.stop()
        ingest.stop()
        await drop_database(dsn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000, help="SSE clients (default 2000, up to 10000)")
    parser.add_argument("--rate", type=float, default=20.0, help="events ingested per second (default 20)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of ingest (default 60: 1,200 events at 20/s, so that the p99 is not "
                             "just the few slowest events)")
    parser.add_argument("--workers", type=int, default=2, help="bulk client processes (default 2)")
    parser.add_argument("--probes", type=int, default=100,
                        help="clients, in their own process, that read eagerly: the latency samples (default 100)")
    parser.add_argument("--lazy-ms", type=float, default=2000.0,
                        help="bulk clients read every this many ms, still every event (default 2000; 0: eagerly)")
    parser.add_argument("--lazy-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--client-priority", choices=("idle", "normal"), default="idle",
                        help="scheduling of the client processes: idle (SCHED_IDLE, default: they stand "
                             "in for other machines) or normal (they compete with the servers)")
    parser.add_argument("--bridge-process", action="store_true",
                        help="run the Kafka→Redis bridge in a second stream process that serves no clients")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return asyncio.run(worker_main(args))
    if not 1 <= args.clients <= 10_000:
        parser.error("--clients must be between 1 and 10000")
    # The private stack starts before the event loop does (Stack.up blocks) and is stopped
    # whatever happens after, Ctrl-C included.
    env, stack = servers_env()
    try:
        result = asyncio.run(bench(args, env))
    finally:
        if stack is not None:
            stack.down(purge=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
