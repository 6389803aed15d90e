"""Attachment upload throughput: raw presigned PUTs (floor) vs. create → PUT → complete through ATAS.

    scripts/bench artifacts [--screenshots 160] [--videos 8] [--concurrency 16] [--rounds 2]

A realistic mix: 200 KB screenshots and 20 MB videos (multipart at the default 16 MiB part size).

* floor: one presigned PUT per object straight to the same S3-compatible server (S3Proxy from
  ``atas stack up``, or the store ``STORAGE_URL``/``S3_ENDPOINT_URL`` name), URLs signed before
  the clock starts — the best the store does for these objects;
* atas: per object ``POST /v1/executions/{id}/attachments`` → PUT (or the parts) → ``POST
  /v1/attachments/{id}/complete`` against a real ``atas serve ingest`` subprocess.

Both sides alternate for ``--rounds`` rounds; figures are medians. ``presign_p50_ms``/``p99`` are
the create request's latency as the harness sees it, measured on its own at the same concurrency
(``create_under_load_*``: during the uploads, which mostly times the load generator's own event
loop, busy pushing bytes on the same CPUs). ``ingest_bytes_in`` is what the ingest
process read (``/proc/<pid>/io`` rchar: sockets and files, PostgreSQL's answers included) during the
ATAS rounds: an upper bound of what passed through it. ``verified`` = stored objects whose sha256
(downloaded again from the store) equals the uploaded bytes' ÷ uploads. The harness declares no
sha256 unless ``--declare-sha256`` (then completion reads each object back: see docs/attachments.md).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Server, p99  # noqa: E402  (bench/ is a folder of scripts, not a package)

from atas.common.db import create_database, drop_database  # noqa: E402
from atas.common.storage import StorageSettings  # noqa: E402
from atas.common.storage_s3 import S3Store  # noqa: E402

PROJECT = "bench"


def say(message: str) -> None:
    print(f"[bench artifacts] {message}", file=sys.stderr, flush=True)


def servers(stack_dir: Path) -> dict[str, str]:
    keys = ("DB_URL", "KAFKA_BOOTSTRAP_SERVERS", "JWT_SECRET", "STORAGE_URL", "S3_ENDPOINT_URL", "S3_REGION",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    env = {k: os.environ[k] for k in keys if os.environ.get(k)}
    missing = [c for c, k in (("postgres", "DB_URL"), ("kafka", "KAFKA_BOOTSTRAP_SERVERS"), ("s3", "STORAGE_URL"))
               if k not in env]
    if missing:
        from atas.common.stack import Stack

        say(f"starting a private stack ({', '.join(missing)}) in {stack_dir}")
        started = Stack(stack_dir).up(missing)
        env.update({k: v for k, v in started.items() if k in keys and k != "JWT_SECRET"})
    env.setdefault("JWT_SECRET", secrets.token_urlsafe(32))
    return env


def objects(screenshots: int, videos: int) -> list[tuple[str, str, bytes]]:
    """(name, content type, bytes): distinct objects sharing two random bodies (memory stays low)."""
    shot, video = os.urandom(200 * 1024), os.urandom(20 * 1024 * 1024)
    out = [(f"shot{i}.png", "image/png", i.to_bytes(8, "big") + shot) for i in range(screenshots)]
    out += [(f"video{i}.webm", "video/webm", i.to_bytes(8, "big") + video) for i in range(videos)]
    return out


async def _put(session: aiohttp.ClientSession, method: str, url: str, headers: dict, data: bytes) -> None:
    async with session.request(method, url, data=io.BytesIO(data), headers=headers) as r:
        if r.status >= 300:
            raise RuntimeError(f"upload refused: {r.status} {(await r.read())[:300]!r}")


async def floor(store: S3Store, objs, concurrency: int, ttl: int) -> float:
    """MB/s of one presigned PUT per object, URLs signed beforehand."""
    run = uuid.uuid4().hex
    signed = [(await store.presign_put(store.key("floor", run, str(i)), ctype, len(data), ttl, ""), data)
              for i, (_n, ctype, data) in enumerate(objs)]
    queue = list(reversed(signed))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            while queue:
                up, data = queue.pop()
                await _put(session, up.method, up.url, up.headers, data)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    await store.delete_prefix(store.key("floor", run) + "/")
    return sum(len(d) for _n, _c, d in objs) / elapsed / 1e6


async def through_atas(url: str, token: str, objs, concurrency: int, declare_sha: bool) -> tuple[float, tuple, str]:
    """MB/s of create → PUT(s) → complete, the create latencies (alone, under upload load), and the
    execution id."""
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        async with session.post(url + "/v1/executions", headers=auth,
                                json={"project": PROJECT, "name": "artifacts bench", "id": str(uuid.uuid4())}) as r:
            execution = (await r.json())["id"]
        # Warm-up (not measured): the server's first requests open pool and store connections.
        for i in range(4):
            async with session.post(f"{url}/v1/executions/{execution}/attachments", headers=auth, json={
                    "name": f"warmup{i}-{uuid.uuid4().hex}.png", "content_type": "image/png", "size_bytes": 1}) as r:
                assert r.status == 201, await r.text()
        # Create latency on its own (the upload-to-be of each object, concurrency as below, nothing
        # uploaded): measured under upload load it would mostly time this process's own event loop,
        # busy pushing bytes. Those pending rows are left alone.
        alone: list[float] = []
        pending = [(f"presign{i}-{name}", ctype, len(data)) for i, (name, ctype, data) in enumerate(objs)]

        async def creator():
            while pending:
                name, ctype, size = pending.pop()
                t = time.perf_counter()
                async with session.post(f"{url}/v1/executions/{execution}/attachments", headers=auth, json={
                        "name": name, "content_type": ctype, "size_bytes": size}) as r:
                    assert r.status == 201, await r.text()
                    await r.read()
                alone.append(time.perf_counter() - t)

        await asyncio.gather(*(creator() for _ in range(concurrency)))
        queue = list(reversed(objs))
        latencies: list[float] = []

        async def worker():
            while queue:
                name, ctype, data = queue.pop()
                body = {"name": name, "content_type": ctype, "size_bytes": len(data), "test_id": f"t::{name}"}
                if declare_sha:
                    body["sha256"] = hashlib.sha256(data).hexdigest()
                t = time.perf_counter()
                async with session.post(f"{url}/v1/executions/{execution}/attachments", json=body,
                                        headers=auth) as r:
                    created = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"create refused: {r.status} {created}")
                latencies.append(time.perf_counter() - t)
                if created.get("upload"):
                    up = created["upload"]
                    await _put(session, up["method"], up["url"], up["headers"], data)
                else:
                    offset = 0
                    for part in created["parts"]:
                        await _put(session, part["method"], part["url"], part["headers"],
                                   data[offset:offset + part["size_bytes"]])
                        offset += part["size_bytes"]
                async with session.post(url + created["complete"], headers=auth) as r:
                    if r.status != 200:
                        raise RuntimeError(f"complete refused: {r.status} {await r.text()}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return sum(len(d) for _n, _c, d in objs) / elapsed / 1e6, (alone, latencies), execution


async def verify(dsn: str, store: S3Store, execution: str, objs) -> int:
    """How many stored objects of ``execution`` have the sha256 of the bytes uploaded for them."""
    expected = {name: hashlib.sha256(data).digest() for name, _c, data in objs}
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name, storage_key FROM attachments WHERE execution_id = $1 "
                                "AND state = 'stored' AND name NOT LIKE 'warmup%'", uuid.UUID(execution))
    finally:
        await conn.close()
    return sum([await store.sha256(r["storage_key"]) == expected[r["name"]] for r in rows])


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


async def run(args: argparse.Namespace) -> dict:
    from atas.common.auth import mint_token
    from atas.common.config import parse_db_url

    with tempfile.TemporaryDirectory(prefix="atas-bench-") as tmp:
        tmp_path = Path(tmp)
        env = await asyncio.to_thread(servers, tmp_path / "stack")
        dsn = await create_database(parse_db_url(env["DB_URL"]), f"atas_bench_{secrets.token_hex(4)}", migrate=True)
        bucket = env["STORAGE_URL"].removeprefix("s3://").split("/")[0]
        prefix = f"bench-{secrets.token_hex(4)}"
        storage = {k: env[k] for k in ("S3_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                   if k in env}
        store = S3Store(StorageSettings(url=env["STORAGE_URL"], scheme="s3", bucket=bucket, prefix=prefix + "/",
                                        region=env.get("S3_REGION"), endpoint_url=env.get("S3_ENDPOINT_URL"),
                                        access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                                        secret_access_key=env.get("AWS_SECRET_ACCESS_KEY")))
        server = None
        try:
            objs = objects(args.screenshots, args.videos)
            total = sum(len(d) for _n, _c, d in objs)
            server = Server({"DB_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
                             "KAFKA_TOPIC": f"atas.events.bench-{secrets.token_hex(3)}",
                             "JWT_SECRET": env["JWT_SECRET"],
                             "STORAGE_URL": f"s3://{bucket}/{prefix}", **storage, "LOG_LEVEL": "warning",
                             **({"ATTACHMENT_PART_BYTES": str(args.part_bytes)} if args.part_bytes else {})},
                            tmp_path / "ingest.log")
            await server.wait_ready()
            token = mint_token(env["JWT_SECRET"], subject="bench", scopes=["ingest:write"], projects=[PROJECT])
            floors, atas, ratios, latencies, loaded = [], [], [], [], []
            bytes_in, uploads, good = 0, 0, 0
            for n in range(1, args.rounds + 1):
                f = await floor(store, objs, args.concurrency, 600)
                before = rchar(server.proc.pid)
                a, (lat, under_load), execution = await through_atas(server.url, token, objs, args.concurrency,
                                                                     args.declare_sha256)
                bytes_in += rchar(server.proc.pid) - before
                floors.append(f)
                atas.append(a)
                ratios.append(a / f)
                latencies += lat
                loaded += under_load
                uploads += len(objs)
                good += await verify(dsn, store, execution, objs)
                say(f"round {n}: floor {f:,.1f} MB/s, atas {a:,.1f} MB/s → ratio {a / f:.3f}; "
                    f"create p50 {statistics.median(lat) * 1000:.1f} ms alone, "
                    f"{statistics.median(under_load) * 1000:.1f} ms under upload load")
        finally:
            if server is not None:
                server.stop()
            await store.delete_prefix(prefix + "/")
            await store.close()
            await drop_database(dsn)
            if (tmp_path / "stack" / "state.json").exists():
                from atas.common.stack import Stack

                Stack(tmp_path / "stack").down(purge=True)
    return {
        "bench": "artifacts", "screenshots": args.screenshots, "videos": args.videos,
        "concurrency": args.concurrency, "rounds": args.rounds, "bytes": total * args.rounds,
        "floor_mb_per_s": round(statistics.median(floors), 1), "atas_mb_per_s": round(statistics.median(atas), 1),
        "ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "presign_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "presign_p99_ms": round(p99(latencies) * 1000, 2),
        "create_under_load_p50_ms": round(statistics.median(loaded) * 1000, 2),
        "create_under_load_p99_ms": round(p99(loaded) * 1000, 2),
        "ingest_bytes_in": bytes_in, "verified": round(good / uploads, 4), "declare_sha256": args.declare_sha256,
        "part_bytes": args.part_bytes or 16 * 1024 * 1024,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench artifacts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshots", type=int, default=160, help="200 KB screenshots per side and round")
    parser.add_argument("--videos", type=int, default=8, help="20 MB videos per side and round")
    parser.add_argument("--concurrency", type=int, default=16, help="uploads in flight (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="floor/atas rounds; figures are medians")
    parser.add_argument("--part-bytes", type=int, default=None,
                        help="ATTACHMENT_PART_BYTES of the server (default: its default, 16 MiB)")
    parser.add_argument("--declare-sha256", action="store_true",
                        help="declare each file's sha256 (completion then reads objects back to check it)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
