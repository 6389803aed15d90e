"""Benchmark of the query service: cache hits against a raw Redis GET, cold aggregations, deep pages.

    scripts/bench query                      # 20,000 executions x 100 results = 2,000,000 results
    scripts/bench query --executions 100000  # 10 million results
    scripts/bench query --reuse              # keep the dataset of a previous run (same sizes)

Generates a dataset with COPY into a database of its own (``atas_bench_query``), through the real
rollup trigger, then runs two ``atas serve query`` processes (two pods sharing Redis) and measures:

* ``redis_get_p50_ms``: the floor, a GET of a value of the same size from this process;
* ``hit_p50_ms`` / ``hit_rps``: the overview served from cache over HTTP (sequential / 64 in flight),
  by a pod with the near cache (the default); ``hit_redis_p50_ms``: the same from a pod without
  it, so every hit is a Redis GET;
* ``miss_overview_p50_ms`` / ``miss_trends_p50_ms``: cold aggregations over ``--range-days``;
* ``page1_ms`` / ``page1000_ms``: keyset pages of recent executions (not served from cache);
* ``stampede_aggregations``: 200 concurrent requests on one cold key, spread over both pods;
* ``rollup_trigger_ms_per_batch`` / ``_overhead_pct``: 100-row COPY batches (one execution each, as
  ingest writes them) with and without the rollup trigger, alternating, medians.

Servers come from ``eval "$(atas stack env)"`` or a private stack in a temporary folder. Progress
goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import asyncpg
import yarl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atas.common.auth import mint_token  # noqa: E402
from atas.common.config import RedisSettings, parse_db_url  # noqa: E402
from atas.common.migrate import migrate_dsn  # noqa: E402
from atas.common.redis import create_redis  # noqa: E402
from atas.query.routes import encode_cursor  # noqa: E402
from tests.helpers import ServiceProcess  # noqa: E402

DB_NAME = "atas_bench_query"
PROJECT = "bench"
ENVIRONMENTS = ("ci", "staging", "nightly")
BRANCHES = ("main", "develop", "release", "feature")
RESULT_COLUMNS = ["execution_started_at", "execution_id", "project", "test_id", "attempt", "id", "name",
                  "suite", "file", "status", "duration_ms"]
EXECUTION_COLUMNS = ["id", "project", "name", "environment", "branch", "commit_sha", "status", "started_at",
                     "finished_at", "total", "passed", "failed", "skipped", "errored", "duration_ms",
                     "tests_total", "tests_passed", "tests_failed", "tests_skipped", "tests_errored", "tests_flaky",
                     "max_attempt"]


def say(message: str) -> None:
    print(f"[bench query] {message}", file=sys.stderr, flush=True)


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


# ------------------------------------------------------------------------------ servers


def servers_env() -> tuple[dict[str, str], object | None]:
    from atas.common.stack import env_or_private_stack

    return env_or_private_stack("atas-bench-query")


# ------------------------------------------------------------------------------ dataset


def generate(executions: int, per_execution: int, days: int, tests: int, seed: int, project: str = PROJECT,
             now: datetime | None = None):
    """Yield (execution row, result rows) pairs; counters equal their results, as ingest keeps them."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    span = days * 86400
    suites = [f"suite_{i % 12}" for i in range(tests)]
    files = [f"tests/test_mod{i % 40}.py" for i in range(tests)]
    names = [f"test_case_{i}" for i in range(tests)]
    ids = [f"{files[i]}::{names[i]}" for i in range(tests)]
    base_ms = [rng.randint(5, 2000) for _ in range(tests)]
    flaky = set(rng.sample(range(tests), k=max(1, tests // 20)))
    # CI-like: each commit runs a pipeline of one execution per environment; 8 % of executions are
    # re-runs of the previous one (same commit, environment and branch).
    commit, branch, slot = "c0", BRANCHES[0], -1
    for n in range(executions):
        started = now - timedelta(seconds=span * (1 - (n + rng.random()) / executions))
        if not (n and rng.random() < 0.08):
            slot = (slot + 1) % len(ENVIRONMENTS)
            if slot == 0:
                commit = f"{rng.getrandbits(40):010x}"
                branch = BRANCHES[0] if rng.random() < 0.5 else rng.choice(BRANCHES[1:])
        environment = ENVIRONMENTS[slot]
        eid = uuid.uuid4()
        rows = []
        offset = rng.randrange(tests)
        counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
        summary = {"total": 0, "passed": 0, "failed": 0, "skipped": 0, "error": 0, "flaky": 0}
        total_ms = 0
        k = 0
        while len(rows) < per_execution:
            t = (offset + k) % tests
            k += 1
            attempt = 1
            while len(rows) < per_execution:
                roll = rng.random()
                fail_p = 0.25 if t in flaky else 0.04
                status = ("failed" if roll < fail_p else "error" if roll < fail_p + 0.01
                          else "skipped" if roll > 0.93 else "passed")
                ms = int(base_ms[t] * (0.5 + rng.random()))
                rows.append((started, eid, project, ids[t], attempt, uuid.uuid4(), names[t], suites[t], files[t],
                             status, ms))
                counts[status] += 1
                total_ms += ms
                if status not in ("failed", "error") or attempt == 3 or t not in flaky:
                    break
                attempt += 1
            # the test's final attempt is the one just appended
            summary["total"] += 1
            summary[status] += 1
            summary["flaky"] += status == "passed" and attempt > 1
        running = n >= executions - 5
        status = "running" if running else ("failed" if counts["failed"] + counts["error"] else "passed")
        execution = (eid, project, f"build {n}", environment, branch, commit, status,
                     started, None if running else started + timedelta(milliseconds=total_ms // 4),
                     len(rows), counts["passed"], counts["failed"], counts["skipped"], counts["error"], total_ms,
                     summary["total"], summary["passed"], summary["failed"], summary["skipped"], summary["error"],
                     summary["flaky"],
                     max(r[4] for r in rows))
        yield execution, rows


async def load(dsn: str, args) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO projects (key) VALUES ($1), ('bench-ingest') ON CONFLICT DO NOTHING",
                           PROJECT)
        months = args.days // 28 + 2
        await conn.execute("SELECT atas_ensure_result_partitions($1, 1)", months)
        started = time.perf_counter()
        chunk_execs, chunk_rows = [], []
        done = 0
        step = max(1, args.executions // 20)
        for execution, rows in generate(args.executions, args.results_per_execution, args.days, args.tests, args.seed):
            chunk_execs.append(execution)
            chunk_rows.extend(rows)
            done += 1
            if len(chunk_rows) >= 50_000 or done == args.executions:
                await conn.copy_records_to_table("executions", records=chunk_execs, columns=EXECUTION_COLUMNS)
                await conn.copy_records_to_table("results", records=chunk_rows, columns=RESULT_COLUMNS)
                chunk_execs, chunk_rows = [], []
            if done % step == 0:
                elapsed = time.perf_counter() - started
                say(f"loaded {done:,}/{args.executions:,} executions ({done * args.results_per_execution:,} "
                    f"results) in {elapsed:.0f}s")
        load_s = time.perf_counter() - started
        say("applying the queued per-test deltas to the rollups (what the query pods' worker does)")
        from atas.query.rollups import settle

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            rolled = time.perf_counter()
            await settle(pool, timeout_s=3600)
            rollup_s = time.perf_counter() - rolled
        finally:
            await pool.close()
        say("VACUUM ANALYZE (visibility map for index-only scans, fresh statistics)")
        for table in ("executions", "results", "query_test_daily"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        return {"load_s": round(load_s, 1), "rollup_apply_s": round(rollup_s, 1)}
    finally:
        await conn.close()


async def trigger_overhead(dsn: str, batches: int = 300, batch_rows: int = 100) -> dict:
    """COPY ingest-sized batches (one statement per batch, one execution each), alternating with and
    without the rollup trigger (which appends the batch's deltas to the rollup queue) so that both
    see the same machine load; medians per batch."""
    conn = await asyncpg.connect(dsn)
    try:
        data = list(generate(batches, batch_rows, 1, 120, seed=7, project="bench-ingest"))
        await conn.copy_records_to_table("executions", records=[e for e, _ in data], columns=EXECUTION_COLUMNS)
        times: dict[bool, list[float]] = {True: [], False: []}
        for i, (_, rows) in enumerate(data):
            rollup = i % 2 == 0
            if not rollup:
                await conn.execute("ALTER TABLE results DISABLE TRIGGER query_rollup_results")
            try:
                started = time.perf_counter()
                await conn.copy_records_to_table("results", records=rows, columns=RESULT_COLUMNS)
                times[rollup].append((time.perf_counter() - started) * 1000)
            finally:
                if not rollup:
                    await conn.execute("ALTER TABLE results ENABLE TRIGGER query_rollup_results")
        with_ms, without_ms = statistics.median(times[True][5:]), statistics.median(times[False][5:])
        return {"ingest_batch_ms_without_rollup": round(without_ms, 3), "ingest_batch_ms_with_rollup": round(with_ms, 3),
                "rollup_trigger_ms_per_batch": round(with_ms - without_ms, 3),
                "rollup_trigger_overhead_pct": round((with_ms / without_ms - 1) * 100, 1)}
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ measurements


async def timed_get(session: aiohttp.ClientSession, url: str, params: dict, headers: dict) -> tuple[float, aiohttp.ClientResponse, bytes]:
    started = time.perf_counter()
    async with session.get(url, params=params, headers=headers) as resp:
        body = await resp.read()
    return (time.perf_counter() - started) * 1000, resp, body


class RawHttp:
    """A minimal keep-alive HTTP/1.1 GET client: the hit latency measures the server, not a client
    library (aiohttp's client alone costs more than the whole cache hit on the server)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def __aenter__(self) -> "RawHttp":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def request(self, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def get(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body


async def aggregations(session: aiohttp.ClientSession, urls: list[str], kind: str) -> float:
    total = 0.0
    pattern = re.compile(rf'^atas_query_aggregations_total\{{kind="{kind}"\}} ([0-9.e+]+)$', re.M)
    for url in urls:
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
        match = pattern.search(text)
        total += float(match.group(1)) if match else 0.0
    return total


async def measure(env: dict[str, str], pods: list[ServiceProcess], args) -> dict:
    token = mint_token(env["JWT_SECRET"], subject="bench", scopes=["query:read"], projects=[PROJECT], ttl_seconds=7200)
    headers = {"Authorization": f"Bearer {token}"}
    base = pods[0].url
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    out: dict = {}

    def rng_params(shift_min: int = 0, **extra) -> dict:
        to = now - timedelta(minutes=shift_min)
        return {"project": PROJECT, "from": (to - timedelta(days=args.range_days)).isoformat(),
                "to": to.isoformat(), **extra}

    # Entries of a previous run would turn the cold measurements into hits.
    redis = create_redis(RedisSettings(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"])))
    try:
        stale = [k async for k in redis.scan_iter(match=f"atas:cache:v1:*:{PROJECT}*", count=1000)]
        if stale:
            await redis.delete(*stale)
    finally:
        await redis.aclose()

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        # cold aggregations: a distinct `to` per request makes every one a miss
        for name, path, extra in (("miss_overview_p50_ms", "/v1/dashboard/overview", {}),
                                  ("miss_trends_p50_ms", "/v1/trends", {"bucket": "day"}),
                                  ("miss_trends_hour_p50_ms", "/v1/trends", {"bucket": "hour"}),
                                  ("miss_failing_p50_ms", "/v1/tests/failing", {}),
                                  ("miss_slowest_p50_ms", "/v1/tests/slowest", {}),
                                  ("miss_flaky_p50_ms", "/v1/tests/flaky", {})):
            times = []
            for i in range(args.cold_samples + 1):
                # per-test lists cover whole days: shift those by days to get a new key each time
                params = rng_params(i * 1440 if "tests" in path else 1000 + i, **extra)
                ms, resp, body = await timed_get(session, base + path, params, headers)
                assert resp.status == 200, body[:300]
                assert resp.headers["X-Cache"] == "miss", (name, resp.headers["X-Cache"])
                if i:  # the first one warms connections and plans
                    times.append(ms)
            out[name] = p50(times)
            say(f"{name}: {out[name]} ms")

        # cache hits versus the floor: a raw GET of a value of the same size
        params = rng_params(0)
        _, resp, body = await timed_get(session, base + "/v1/dashboard/overview", params, headers)
        redis = create_redis(RedisSettings(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"])))
        try:
            key = f"atas:bench:floor:{uuid.uuid4().hex}"
            await redis.set(key, b"0" * 16 + body, ex=600)
            floor = []
            for _ in range(args.samples):
                started = time.perf_counter()
                await redis.get(key)
                floor.append((time.perf_counter() - started) * 1000)
            await redis.delete(key)
        finally:
            await redis.aclose()
        async def hit_latencies(url: str) -> list[float]:
            out_ms = []
            async with RawHttp(url) as raw:
                request = raw.request(str(yarl.URL("/v1/dashboard/overview").with_query(params)), headers)
                for _ in range(args.samples):
                    started = time.perf_counter()
                    status, got, _ = await raw.get(request)
                    out_ms.append((time.perf_counter() - started) * 1000)
                    assert status == 200 and got["x-cache"] == "hit", (status, got)
            return out_ms

        hits = await hit_latencies(base)
        out["hit_redis_p50_ms"] = p50(await hit_latencies(pods[1].url))
        out["redis_get_p50_ms"] = p50(floor)
        out["hit_p50_ms"] = p50(hits)
        out["overview_body_bytes"] = len(body)
        say(f"redis GET p50 {out['redis_get_p50_ms']} ms, hit p50 {out['hit_p50_ms']} ms "
            f"(near cache), {out['hit_redis_p50_ms']} ms (every hit read from Redis)")

        count = 0
        deadline = time.perf_counter() + args.rps_seconds

        async def worker(url: str) -> None:
            nonlocal count
            async with RawHttp(url) as raw:
                request = raw.request(str(yarl.URL("/v1/dashboard/overview").with_query(params)), headers)
                while time.perf_counter() < deadline:
                    await raw.get(request)
                    count += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(base) for _ in range(64)))
        out["hit_rps"] = round(count / (time.perf_counter() - started))
        say(f"hit rps (one pod, 64 in flight): {out['hit_rps']}")

        # keyset pages: page 1 and page 1000 through the same uncached path
        top = encode_cursor("ex", datetime(9999, 1, 1, tzinfo=timezone.utc).isoformat(),
                            "ffffffff-ffff-ffff-ffff-ffffffffffff")
        cursor, page = top, 1
        while page < 1000:  # follow the cursors to page 1000 (or the last page of a small dataset)
            async with session.get(base + "/v1/executions", params={"project": PROJECT, "limit": "20",
                                                                     "cursor": cursor}, headers=headers) as r:
                following = (await r.json())["next_cursor"]
            if following is None:
                break
            cursor, page = following, page + 1
        out["deep_page"] = page
        page1, page1000 = [], []
        for _ in range(args.cold_samples * 2):
            page1.append((await timed_get(session, base + "/v1/executions",
                                          {"project": PROJECT, "limit": "20", "cursor": top}, headers))[0])
            ms, resp, body = await timed_get(session, base + "/v1/executions",
                                             {"project": PROJECT, "limit": "20", "cursor": cursor}, headers)
            assert resp.status == 200 and json.loads(body)["items"], "page 1000 should not be empty"
            page1000.append(ms)
        out["page1_ms"] = p50(page1)
        out["page1000_ms"] = p50(page1000)
        say(f"page 1: {out['page1_ms']} ms, page 1000: {out['page1000_ms']} ms")

        # stampede: 200 concurrent requests on one cold key, over both pods
        urls = [p.url for p in pods]
        before = await aggregations(session, urls, "overview")
        params = rng_params(5000)
        responses = await asyncio.gather(*(timed_get(session, urls[i % len(urls)] + "/v1/dashboard/overview",
                                                     params, headers) for i in range(200)))
        assert {r.status for _, r, _ in responses} == {200}
        assert len({b for _, _, b in responses}) == 1
        out["stampede_aggregations"] = int(await aggregations(session, urls, "overview") - before)
        say(f"stampede: {out['stampede_aggregations']} aggregation(s) for 200 requests on 2 pods")
    return out


class _ExplainingPool:
    """Stands in for the pool: runs each repository statement under EXPLAIN ANALYZE instead."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.plans: list[tuple[str, str]] = []

    def acquire(self) -> "_ExplainingPool":
        return self

    async def __aenter__(self) -> "_ExplainingPool":
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def fetch(self, sql: str, *args):
        rows = await self.conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
        self.plans.append((sql, "\n".join(r[0] for r in rows)))
        return []

    async def fetchrow(self, sql: str, *args):
        await self.fetch(sql, *args)
        return None


async def explain(dsn: str, range_days: int, path: Path) -> None:
    """Write the plans of the heavy reads, as the query service runs them, to ``path`` (markdown)."""
    import textwrap

    from atas.query.repository import QueryRepository, Scope
    from atas.query.routes import day_range

    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        scope = Scope(PROJECT, end - timedelta(days=range_days), end)
        first, last = day_range(scope.start, scope.end)
        newest = await conn.fetchrow("SELECT started_at, id FROM executions WHERE project = $1 "
                                     "ORDER BY started_at DESC, id DESC OFFSET 19980 LIMIT 1", PROJECT)
        test_id = await conn.fetchval("SELECT test_id FROM query_test_daily WHERE project = $1 LIMIT 1", PROJECT)
        pool = _ExplainingPool(conn)
        repo = QueryRepository(pool)  # type: ignore[arg-type]
        cases = [
            (f"Overview, execution part ({range_days} days)", lambda: repo.overview(scope)),
            (f"Overview, top failing tests ({range_days} days, rollup)",
             lambda: repo.top_failing(scope, first, last, 10)),
            (f"Trends by day ({range_days} days)", lambda: repo.trends(scope, "day")),
            (f"Trends by hour ({range_days} days)", lambda: repo.trends(scope, "hour")),
            (f"Failing tests ({range_days} days, rollup)",
             lambda: repo.top_failing(scope, first, last, 20)),
            (f"Slowest tests, branch main ({range_days} days, per-branch rollup)",
             lambda: repo.slowest(Scope(PROJECT, scope.start, scope.end, branch="main"), first, last, 20)),
            (f"Flaky tests ({range_days} days)", lambda: repo.flaky(scope, first, last, 20)),
            ("Recent executions, page 1000 (limit 20)",
             lambda: repo.executions_page(PROJECT, limit=21, after=(newest["started_at"], str(newest["id"])),
                                          environment=None, branch=None, status=None, start=None, end=None)),
            ("History of one test, first page",
             lambda: repo.history(PROJECT, test_id, start=end - timedelta(days=90), end=end, limit=51, after=None,
                                  environment=None, branch=None)),
        ]
        results = await conn.fetchval("SELECT count(*) FROM results")
        executions = await conn.fetchval("SELECT count(*) FROM executions")
        out = [f"# Query plans\n\nGenerated by `scripts/bench query --reuse --explain docs/query-plans.md` on "
               f"the benchmark dataset (PostgreSQL {version}; {results:,} results in {executions:,} executions). "
               f"Each plan is the statement the query service runs, under `EXPLAIN (ANALYZE, BUFFERS)`, "
               f"after one warm-up run.\n"]
        notes = {
            "Overview, execution": "Reads executions only (exact counters), never results. A third of the table "
                                   "is in range here, so a sequential scan beats the (project, started_at) index; "
                                   "on longer histories the index range scan is chosen.",
            "Overview, top": "Reads the per-environment rollup: days x environments x tests rows, whatever "
                             "the number of results.",
            "Trends": "Same executions read as the overview, grouped by bucket; generate_series fills empty "
                      "buckets.",
            "Failing": "The rollup again; the cost is the same at 2 or 20 million results.",
            "Slowest": "A branch filter reads the per-branch rollup by its primary key (branch leads).",
            "Flaky": "Retry passes from the rollup; same-commit flips read only the results of re-run "
                     "(commit, environment) pairs, by primary key per execution (the lateral probes): the "
                     "cost follows re-runs, not results. The heaviest read; cached CACHE_TTL_TESTS.",
            "Recent": "Keyset: an index range scan that starts at the cursor, as cheap at page 1000 as at page 1.",
            "History": "Index on (project, test_id, execution_started_at) per partition, newest partition "
                       "first; the older partitions are never executed once the page is full.",
        }
        for title, call in cases:
            await call()  # warm: plans cached, pages in shared buffers, as on a busy server
            pool.plans.clear()
            await call()
            note = next((v for k, v in notes.items() if title.startswith(k)), "")
            for sql, plan in pool.plans:
                out.append(f"## {title}\n\n{note}\n\n```sql\n{textwrap.dedent(sql).strip()}\n```\n\n"
                           f"```\n{plan}\n```\n")
    finally:
        await conn.close()
    path.write_text("\n".join(out))


async def main_async(args, env: dict[str, str]) -> dict:
    if True:  # (the servers are started, and stopped, by main(), outside the event loop)
        server_dsn = parse_db_url(env["DB_URL"], env.get("DB_USER"), env.get("DB_PASSWORD"))
        dsn = server_dsn.rsplit("/", 1)[0] + "/" + DB_NAME
        admin = await asyncpg.connect(server_dsn)
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME)
            if exists and not args.reuse:
                await admin.execute(f'DROP DATABASE "{DB_NAME}" WITH (FORCE)')
                exists = False
            if not exists:
                await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await admin.close()
        await migrate_dsn(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            have = await conn.fetchval("SELECT count(*) FROM executions WHERE project = $1", PROJECT)
        finally:
            await conn.close()
        info: dict = {}
        if have:
            say(f"reusing {have:,} executions in {DB_NAME}")
        else:
            say(f"generating {args.executions:,} executions x {args.results_per_execution} results over "
                f"{args.days} days with COPY")
            info.update(await load(dsn, args))
            info.update(await trigger_overhead(dsn))
        conn = await asyncpg.connect(dsn)
        try:
            info["results"] = await conn.fetchval("SELECT count(*) FROM results WHERE project = $1", PROJECT)
            info["executions"] = await conn.fetchval("SELECT count(*) FROM executions WHERE project = $1", PROJECT)
            info["rollup_rows"] = await conn.fetchval("SELECT count(*) FROM query_test_daily WHERE project = $1",
                                                      PROJECT)
        finally:
            await conn.close()
        say(f"dataset: {info['executions']:,} executions, {info['results']:,} results, "
            f"{info['rollup_rows']:,} rollup rows")

        if args.explain:
            await explain(dsn, args.range_days, args.explain)
            say(f"query plans written to {args.explain}")

        redis_stack = None
        if not args.shared_redis:
            # A Redis of its own: test suites flush the shared one (FLUSHALL) at every Redis test,
            # which would turn measured hits into misses.
            from atas.common.stack import Stack

            redis_stack = Stack(Path(tempfile.mkdtemp(prefix="atas-bench-query-redis-")))
            try:
                redis_env = await asyncio.to_thread(redis_stack.up, ["redis"])  # blocking: off the loop
            except BaseException:
                redis_stack.down(purge=True)
                raise
            env = {**env, **{k: v for k, v in redis_env.items() if k.startswith("REDIS_")}}
        pod_env = {**env, "DB_URL": dsn, "LOG_LEVEL": "warning", "REDIS_POOL_MAX_ACTIVE": "32",
                   "REDIS_POOL_MAX_IDLE": "32", "CACHE_TTL_OVERVIEW": "600", "CACHE_TTL_TRENDS": "600"}
        logs = Path(tempfile.mkdtemp(prefix="atas-bench-query-logs-"))
        # Pod 1 runs without the near cache: its hits always read Redis (hit_redis_p50_ms).
        pods = [ServiceProcess(["serve", "query"], {**pod_env, "QUERY_NEAR_CACHE_MS": str(near)}, logs, f"query-{i}")
                for i, near in enumerate((1000, 0))]
        try:
            for pod in pods:
                pod.wait_healthy(60)
            result = await measure(env, pods, args)
        finally:
            for pod in pods:
                pod.stop()
            if redis_stack is not None:
                redis_stack.down(purge=True)
        return {**result, **info}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=20_000, help="executions to generate (default 20000)")
    parser.add_argument("--results-per-execution", type=int, default=100, help="results per execution (default 100)")
    parser.add_argument("--days", type=int, default=90, help="days the executions span, ending now (default 90)")
    parser.add_argument("--tests", type=int, default=120,
                        help="tests in the project's suite; each execution runs ~100 of them (default 120)")
    parser.add_argument("--range-days", type=int, default=30, help="range of the measured dashboards (default 30)")
    parser.add_argument("--samples", type=int, default=2000, help="sequential requests for the hit/floor p50")
    parser.add_argument("--cold-samples", type=int, default=15, help="requests per cold measurement")
    parser.add_argument("--rps-seconds", type=float, default=3.0, help="duration of the throughput run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shared-redis", action="store_true",
                        help="measure against the stack's Redis instead of a private redis-server")
    parser.add_argument("--reuse", action="store_true", help="keep the dataset of a previous run when present")
    parser.add_argument("--explain", type=Path, default=None, metavar="PATH",
                        help="also write EXPLAIN ANALYZE of the heavy reads to PATH (markdown)")
    args = parser.parse_args()
    # The private stack starts before the event loop does (Stack.up blocks) and is stopped
    # whatever happens after, Ctrl-C included.
    env, stack = servers_env()
    try:
        result = asyncio.run(main_async(args, env))
    finally:
        if stack is not None:
            stack.down(purge=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
