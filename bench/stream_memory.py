"""Memory of one stream process at its connection limit with every send queue full.

    .venv/bin/python bench/stream_memory.py                    # 10,000 clients (STREAM_MAX_CONNECTIONS)
    .venv/bin/python bench/stream_memory.py --clients 2000

The question it answers: does a stream pod fit its memory limit (deploy/k8s/base/stream.yaml,
512Mi) when it holds STREAM_MAX_CONNECTIONS streams and every client has stopped reading, so that
each holds a full send queue (STREAM_CLIENT_QUEUE events) on top of what the kernel buffers?

It starts `atas serve ingest` and `atas serve stream` with the ConfigMap's values
(deploy/k8s/base/configmap.yaml), except addresses, and STREAM_WRITE_TIMEOUT_SECONDS raised so
that stalled clients are held while their queues fill (in production they are cut after 10 s,
which only makes the full-queue state shorter-lived, not smaller). It opens --clients SSE
connections from this process that read their response headers and then never read again (4 KiB
receive buffers: slow clients), and creates executions through the ingest API: each is one
`execution.started` event for every client. It samples the stream process's RSS, its open
streams, and the host's TCP buffer memory (/proc/net/sockstat: socket buffers are charged to the
pod's memory cgroup too) until the clients' queues overflow and the server starts cutting them.

Prints one JSON line: peak RSS (MB), RSS with all clients connected and idle, the TCP buffer
memory at that peak, the events sent, and the memory limit it is compared with.
Servers come from ``eval "$(atas stack env)"`` or a private stack in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stream import raise_nofile, rss_kb, say  # noqa: E402

PROJECT = "bench"


def shipped_config() -> dict[str, str]:
    docs = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "configmap.yaml").read_text())
    return dict(docs["data"])


def memory_limit_mi() -> int:
    for doc in yaml.safe_load_all((REPO / "deploy" / "k8s" / "base" / "stream.yaml").read_text()):
        if doc and doc["kind"] == "Deployment":
            return int(doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
                       .removesuffix("Mi"))
    raise RuntimeError("no stream Deployment")


def tcp_buffer_mb() -> float:
    """Pages the kernel holds in TCP socket buffers, host-wide (this run dominates them)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * 4096 / 2**20
    return 0.0


async def open_stalled(host: str, port: int, token: str, n: int) -> list[socket.socket]:
    """n SSE connections that read the response head and then never read again."""
    loop = asyncio.get_running_loop()
    request = (f"GET /v1/stream?project={PROJECT} HTTP/1.0\r\nHost: {host}\r\n"
               f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()
    sem = asyncio.Semaphore(100)
    socks: list[socket.socket] = []

    async def one() -> None:
        async with sem:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await loop.sock_connect(s, (host, port))
            await loop.sock_sendall(s, request)
            head = await loop.sock_recv(s, 4096)
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"stream refused a client: {head[:200]!r}")
            socks.append(s)

    await asyncio.gather(*(one() for _ in range(n)))
    return socks


def open_streams(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith("atas_stream_connections "):
            return int(float(line.split()[1]))
    return -1


async def measure(args, env: dict[str, str]) -> dict:
    import aiohttp

    from atas.common.auth import mint_token
    from atas.common.bus import KafkaBus
    from atas.common.config import KafkaSettings, parse_db_url
    from atas.common.db import create_database
    from tests.helpers import ServiceProcess

    procs: list[ServiceProcess] = []
    socks: list[socket.socket] = []
    try:
        run_id = uuid.uuid4().hex[:8]
        base_dsn = parse_db_url(env["DB_URL"], env.get("DB_USER"), env.get("DB_PASSWORD"))
        dsn = await create_database(base_dsn, f"atas_bench_streammem_{run_id}", migrate=True)
        topic = f"atas.bench.streammem.{run_id}"
        await KafkaBus(KafkaSettings(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], topic=topic)).ensure_topic(
            partitions=3)
        secret = "bench-secret-" + "x" * 32
        config = shipped_config()
        proc_env = {**env, **config, "DB_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
                    "REDIS_HOST": env["REDIS_HOST"], "REDIS_PORT": env.get("REDIS_PORT", "6379"),
                    "REDIS_PASSWORD": env.get("REDIS_PASSWORD", ""), "KAFKA_TOPIC": topic, "JWT_SECRET": secret,
                    "LOG_LEVEL": "warning", "STREAM_REDIS_PREFIX": f"atas:bench:{run_id}:",
                    "STREAM_BRIDGE_GROUP": f"bench-mem-{run_id}", "INGEST_RELAY_POLL_SECONDS": "1",
                    "SHUTDOWN_DRAIN_SECONDS": "30",
                    # Held, not cut, while the queues fill (see the module docstring).
                    "STREAM_WRITE_TIMEOUT_SECONDS": "3600"}
        for key in ("DB_USER", "DB_PASSWORD"):
            proc_env.pop(key, None)
        queue = int(config["STREAM_CLIENT_QUEUE"])
        logs = Path(tempfile.mkdtemp(prefix="atas-bench-streammem-"))
        stream = ServiceProcess(["serve", "stream"], proc_env, logs, "stream")
        ingest = ServiceProcess(["serve", "ingest"], proc_env, logs, "ingest")
        procs += [stream, ingest]
        await asyncio.gather(*(asyncio.to_thread(p.wait_healthy, 60) for p in procs))
        token = mint_token(secret, subject="bench", scopes=["ingest:write", "stream:read"], projects=[PROJECT],
                           ttl_seconds=3600)
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while "atas_stream_bridge_assigned 1.0" not in await (await http.get(stream.url + "/metrics")).text():
                    await asyncio.sleep(0.2)
            rss_start = rss_kb(stream.proc.pid)
            t = time.perf_counter()
            socks = await open_stalled("127.0.0.1", stream.port, token, args.clients)
            say(f"{len(socks)} stalled clients connected in {time.perf_counter() - t:.1f}s")
            await asyncio.sleep(3)
            rss_idle = rss_kb(stream.proc.pid)
            tcp_idle = tcp_buffer_mb()
            headers = {"Authorization": f"Bearer {token}"}
            peak = (rss_idle, tcp_idle, len(socks), 0)
            sent = 0
            # Past the queue limit plus what the kernel buffers hold, unless told otherwise.
            target = args.events or int(queue * 1.6)
            say(f"ingesting up to {target} events at {args.rate}/s (queue limit {queue})")
            t0 = time.perf_counter()
            pending: set[asyncio.Task] = set()

            async def create() -> None:
                async with http.post(f"{ingest.url}/v1/executions", headers=headers,
                                     json={"project": PROJECT, "name": "memory " + "x" * args.name_bytes}) as r:
                    if r.status not in (200, 201):
                        say(f"ingest answered {r.status}")

            next_sample = 0.0
            while sent < target:
                due = t0 + sent / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(create())
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
                if time.perf_counter() >= next_sample:
                    next_sample = time.perf_counter() + 1.0
                    rss = rss_kb(stream.proc.pid)
                    conns = open_streams(await (await http.get(stream.url + "/metrics")).text())
                    if rss > peak[0]:
                        peak = (rss, tcp_buffer_mb(), conns, sent)
                    if sent % 100 < args.rate:
                        say(f"sent {sent}: rss {rss / 1024:.0f} MB, open streams {conns}, "
                            f"tcp buffers {tcp_buffer_mb():.0f} MB")
                    if conns < len(socks) * 0.5:
                        say("more than half of the clients were cut (queues overflowed): stopping")
                        break
            await asyncio.gather(*pending)
            await asyncio.sleep(3)
            rss_end = rss_kb(stream.proc.pid)
            peak = max(peak, (rss_end, tcp_buffer_mb(), -1, sent))
        return {"clients": len(socks), "client_queue": queue, "events_sent": sent,
                "rss_start_mb": round(rss_start / 1024, 1), "rss_idle_mb": round(rss_idle / 1024, 1),
                "kb_per_idle_conn": round((rss_idle - rss_start) / max(len(socks), 1), 1),
                "rss_peak_mb": round(peak[0] / 1024, 1), "tcp_buffers_at_peak_mb": round(peak[1], 1),
                "open_streams_at_peak": peak[2], "events_at_peak": peak[3],
                "memory_limit_mb": memory_limit_mi(), "host_tcp_buffers_idle_mb": round(tcp_idle, 1)}
    finally:
        for s in socks:
            s.close()
        for p in procs:
            p.terminate()
            try:
                p.proc.wait(timeout=40)
            except Exception:  # noqa: BLE001 - a stuck process is killed below
                p.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000, help="stalled SSE clients (default 10000)")
    parser.add_argument("--rate", type=float, default=40.0, help="events per second (default 40)")
    parser.add_argument("--name-bytes", type=int, default=0, help="pad each event's execution name (<= 1000)")
    parser.add_argument("--events", type=int, default=0, help="events to send (default 1.6 x STREAM_CLIENT_QUEUE)")
    args = parser.parse_args()
    from atas.common.stack import env_or_private_stack

    raise_nofile()
    # Outside the event loop: the private stack's start-up runs its own loops.
    env, stack = env_or_private_stack("atas-bench-stream-memory")
    try:
        print(json.dumps(asyncio.run(measure(args, env))), flush=True)
    finally:
        if stack is not None:
            stack.down(purge=True)


if __name__ == "__main__":
    main()
