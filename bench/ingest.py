"""Ingest throughput: raw COPY floor vs. results through the HTTP API, in the same run.

    scripts/bench ingest [--rows 100000] [--batch 500] [--concurrency 8]

Floor and ingest alternate for ``--rounds`` rounds; the JSON reports medians (and each round's
ratio), p99 over every batch.

* floor: asyncpg ``copy_records_to_table`` of the same rows into the same ``results`` table (same
  partitions and indexes), in batches of ``--batch`` over ``--concurrency`` connections — the best
  PostgreSQL does for this batch shape without any of the API's work;
* ingest: the same rows as ``POST /v1/executions/{id}/results`` batches against a real
  ``atas serve ingest`` subprocess (its relay publishing every event to Kafka meanwhile), one
  execution per client worker (harnesses run in parallel), request bodies encoded beforehand so
  the load generator spends as little CPU as possible.

Servers come from the environment (``eval "$(atas stack env)"``) or a private stack started in a
temp folder. Runs in a fresh database that is dropped afterwards. Progress goes to stderr; the last
stdout line is one JSON object: floor_rows_per_s, ingest_results_per_s, ratio, p99_batch_ms, ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from atas.common.db import create_database, drop_database
from atas.common.stack import free_port

COLUMNS = ("execution_started_at", "execution_id", "project", "test_id", "attempt", "id", "name", "suite",
           "file", "status", "started_at", "duration_ms", "error_type", "error_message", "error_trace",
           "attachments", "attributes")
PROJECT = "bench"


def say(message: str) -> None:
    print(f"[bench ingest] {message}", file=sys.stderr, flush=True)


def make_results(n: int, seed: int = 7) -> list[dict]:
    """Realistic results: mostly passes, some failures with a message and a trace, some skips."""
    rng = random.Random(seed)
    trace = "Traceback (most recent call last):\n" + "  File \"tests/test_checkout.py\", line 42, in test\n" * 6
    out = []
    for i in range(n):
        roll = rng.random()
        status = "failed" if roll < 0.05 else "skipped" if roll < 0.10 else "error" if roll < 0.11 else "passed"
        r = {"test_id": f"tests/test_mod{i % 200}.py::test_case_{i}", "name": f"test_case_{i}",
             "suite": f"tests.test_mod{i % 200}", "file": f"tests/test_mod{i % 200}.py", "status": status,
             "attempt": 1, "duration_ms": rng.randint(1, 5000), "attributes": {"worker": f"gw{i % 8}"}}
        if status in ("failed", "error"):
            r.update(error_type="AssertionError", error_message=f"expected 200, got 500 (case {i})",
                     error_trace=trace)
        out.append(r)
    return out


def chunks(seq: list, size: int) -> list[list]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


# --------------------------------------------------------------------------------------- servers


def servers(stack_dir: Path) -> dict[str, str]:
    """DB_URL, KAFKA_BOOTSTRAP_SERVERS and JWT_SECRET: from the environment, else a private stack."""
    env = {k: os.environ[k] for k in ("DB_URL", "KAFKA_BOOTSTRAP_SERVERS", "JWT_SECRET") if os.environ.get(k)}
    missing = [c for c, k in (("postgres", "DB_URL"), ("kafka", "KAFKA_BOOTSTRAP_SERVERS")) if k not in env]
    if missing:
        from atas.common.stack import Stack

        say(f"starting a private stack ({', '.join(missing)}) in {stack_dir}")
        started = Stack(stack_dir).up(missing)
        env.update({k: v for k, v in started.items() if k in ("DB_URL", "KAFKA_BOOTSTRAP_SERVERS")})
    env.setdefault("JWT_SECRET", secrets.token_urlsafe(32))
    return env


# ----------------------------------------------------------------------------------------- floor


async def floor(dsn: str, results: list[dict], batch: int, concurrency: int) -> tuple[float, list[float]]:
    """Rows/s and batch latencies (s) of raw COPY batches of the same rows, ``concurrency``
    connections at once."""
    started_at = datetime.now(timezone.utc)
    enc = msgspec.json.Encoder()
    batches = []
    for w, part in enumerate(chunks(results, batch)):
        execution = uuid.uuid4()
        batches.append([
            (started_at, execution, PROJECT, r["test_id"], r["attempt"], uuid.uuid4(), r["name"], r["suite"],
             r["file"], r["status"], None, r["duration_ms"], r.get("error_type"), r.get("error_message"),
             r.get("error_trace"), None, enc.encode(r["attributes"]).decode())
            for r in part])
    # Plain connections: asyncpg's built-in jsonb codec (binary, takes JSON text) serves binary COPY.
    conns = [await asyncpg.connect(dsn, server_settings={"application_name": "atas-bench-floor"})
             for _ in range(concurrency)]
    try:
        queue = list(reversed(batches))
        latencies: list[float] = []

        async def worker(conn):
            while queue:
                records = queue.pop()
                t = time.perf_counter()
                await conn.copy_records_to_table("results", records=records, columns=COLUMNS)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - t0
    finally:
        for c in conns:
            await c.close()
    return len(results) / elapsed, latencies


# ---------------------------------------------------------------------------------------- ingest


class Server:
    """``atas serve ingest`` as a subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "atas.cli.main", "serve", "ingest", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                     stdout=self._log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"atas serve ingest exited with {self.proc.returncode}")
                try:
                    async with s.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError("atas serve ingest did not become ready")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def ingest(url: str, token: str, results: list[dict], batch: int, concurrency: int,
                 warmup: int) -> tuple[float, list[float]]:
    """Results/s and batch latencies (s) through the API, one execution per client worker."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    enc = msgspec.json.Encoder()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        executions = []
        for w in range(concurrency):
            async with session.post(url + "/v1/executions", data=enc.encode(
                    {"project": PROJECT, "name": f"bench worker {w}", "id": str(uuid.uuid4())})) as r:
                assert r.status == 201, await r.text()
                executions.append((await r.json())["id"])
        # Bodies are encoded before the clock starts: the load generator shares the machine's CPUs.
        parts = chunks(results, batch)
        bodies = [enc.encode({"results": p}) for p in parts]
        for w in range(min(warmup, len(bodies))):
            async with session.post(f"{url}/v1/executions/{executions[0]}/results",
                                    data=enc.encode({"results": [{**r, "test_id": "warmup-" + r["test_id"]}
                                                                 for r in parts[w]]})) as r:
                assert r.status == 200, await r.text()
        queue = list(reversed(list(zip(bodies, (len(p) for p in parts)))))
        latencies: list[float] = []
        accepted = 0

        async def worker(execution: str) -> None:
            nonlocal accepted
            target = f"{url}/v1/executions/{execution}/results"
            while queue:
                body, _n = queue.pop()
                t = time.perf_counter()
                async with session.post(target, data=body) as r:
                    answer = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"batch refused: {r.status} {answer[:300]!r}")
                latencies.append(time.perf_counter() - t)
                accepted += msgspec.json.decode(answer)["accepted"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(e) for e in executions))
        elapsed = time.perf_counter() - t0
    if accepted != len(results):
        raise RuntimeError(f"the server accepted {accepted} of {len(results)} results")
    return len(results) / elapsed, latencies


async def truncate_results(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE results")
        await conn.execute("VACUUM ANALYZE results")
    finally:
        await conn.close()


async def outbox_drained(dsn: str, timeout: float = 120) -> float:
    """Seconds until the relay emptied the outbox after the load ended."""
    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        while await conn.fetchval("SELECT count(*) FROM outbox"):
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the relay did not drain the outbox")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ main


async def run(args: argparse.Namespace) -> dict:
    from atas.common.auth import mint_token
    from atas.common.config import parse_db_url

    with tempfile.TemporaryDirectory(prefix="atas-bench-") as tmp:
        tmp_path = Path(tmp)
        server = dsn = None
        try:
            # Stack.up blocks: a thread of its own, off the event loop. A failed start stops what it
            # started itself; the finally below stops a stack that did start.
            env = await asyncio.to_thread(servers, tmp_path / "stack")
            dsn = await create_database(parse_db_url(env["DB_URL"]), f"atas_bench_{secrets.token_hex(4)}",
                                        migrate=True)
            results = make_results(args.rows)
            topic = f"atas.events.bench-{secrets.token_hex(3)}"
            server = Server({"DB_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
                             "KAFKA_TOPIC": topic, "JWT_SECRET": env["JWT_SECRET"],
                             "LOG_LEVEL": args.log_level}, tmp_path / "ingest.log")
            await server.wait_ready()
            token = mint_token(env["JWT_SECRET"], subject="bench", scopes=["ingest:write"], projects=[PROJECT])
            # Floor and ingest alternate, round after round, and the ratio is the median of the
            # rounds' ratios: on a shared machine the load drifts, and a floor measured a minute
            # before the system would compare two different machines.
            floors, ingests, ratios, floor_lat, ingest_lat, drains = [], [], [], [], [], []
            server_cpu = 0.0
            for n in range(1, args.rounds + 1):
                await truncate_results(dsn)  # both sides start from an empty table
                floor_rps, lat = await floor(dsn, results, args.batch, args.concurrency)
                floors.append(floor_rps)
                floor_lat += lat
                say(f"round {n}: floor  COPY {floor_rps:,.0f} rows/s (p99 batch {p99(lat) * 1000:.1f} ms)")
                await truncate_results(dsn)
                cpu0 = server.cpu_seconds()
                ingest_rps, lat = await ingest(server.url, token, results, args.batch, args.concurrency,
                                               args.warmup)
                cpu = server.cpu_seconds() - cpu0
                server_cpu += cpu
                ingests.append(ingest_rps)
                ingest_lat += lat
                ratios.append(ingest_rps / floor_rps)
                drains.append(await outbox_drained(dsn))
                say(f"round {n}: ingest HTTP {ingest_rps:,.0f} results/s (p99 batch {p99(lat) * 1000:.1f} ms, "
                    f"server {cpu * 1e6 / args.rows:.0f} CPU µs per result, outbox drained "
                    f"{drains[-1]:.2f} s after) → ratio {ratios[-1]:.3f}")
        finally:
            if server is not None:
                server.stop()
            if dsn is not None:
                await drop_database(dsn)
            if (tmp_path / "stack" / "state.json").exists():
                from atas.common.stack import Stack

                Stack(tmp_path / "stack").down(purge=True)
    return {
        "bench": "ingest", "rows": args.rows, "batch": args.batch, "concurrency": args.concurrency,
        "rounds": args.rounds, "floor_rows_per_s": round(statistics.median(floors)),
        "floor_p99_batch_ms": round(p99(floor_lat) * 1000, 1),
        "ingest_results_per_s": round(statistics.median(ingests)),
        "ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "p99_batch_ms": round(p99(ingest_lat) * 1000, 1), "outbox_drain_s": round(max(drains), 2),
        "server_cpu_us_per_result": round(server_cpu * 1e6 / (args.rows * args.rounds), 1),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="results per side (default 100000)")
    parser.add_argument("--batch", type=int, default=500, help="results per batch (default 500)")
    # 16: the API path is latency-bound (several round trips per batch) and needs more batches in
    # flight than COPY to saturate; the floor is measured at the same concurrency.
    parser.add_argument("--concurrency", type=int, default=16,
                        help="concurrent batches / connections (default 16)")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured batches per round (default 4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="floor/ingest rounds; figures are medians (default 3)")
    parser.add_argument("--log-level", default="info", help="LOG_LEVEL of the ingest server (default info)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
