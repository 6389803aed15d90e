"""``scripts/chaos``: the whole system under load while its parts die and come back, then a check
of the history (docs/reliability.md). Progress goes to stderr; the last stdout line is one JSON
object. Everything it starts is stopped when it ends, also on Ctrl-C, SIGTERM or a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time

import aiohttp
import asyncpg

from atas.common.auth import mint_token

from . import check
from .faults import Injector, schedule
from .fleet import Fleet, say
from .load import Availability, Harness, History, dashboard_reader
from .monitor import Monitor

PROJECT = "chaos"
# Short cache TTLs: after quiescence a cached answer is waited out, not excused (see check.query).
CACHE_TTL_S = 15
ENV = {
    "LOG_LEVEL": "warning", "SHUTDOWN_DRAIN_SECONDS": "5", "INGEST_RELAY_POLL_SECONDS": "0.2",
    "STREAM_HEARTBEAT_SECONDS": "2", "STREAM_CLOSE_SPREAD_SECONDS": "1", "STREAM_WRITE_TIMEOUT_SECONDS": "5",
    **{f"CACHE_TTL_{k}": str(CACHE_TTL_S) for k in ("OVERVIEW", "RECENT", "TRENDS", "STATUS")},
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=1, help="fault schedule and load seed (default 1)")
    p.add_argument("--duration", type=float, default=600, help="seconds of load and faults (default 600)")
    p.add_argument("--harnesses", type=int, default=8, help="concurrent executions (default 8)")
    p.add_argument("--monitors", type=int, default=2, help="SSE clients per stream process (default 2)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, fleet: Fleet) -> dict:
    await asyncio.to_thread(fleet.start, ENV)
    secret = fleet.env["JWT_SECRET"]
    token = mint_token(secret, subject="chaos", scopes=["ingest:write", "query:read", "stream:read"],
                       projects=[PROJECT], ttl_seconds=int(args.duration) + 3600)
    h = History()
    rng = random.Random(args.seed)
    monitors = [Monitor(f"{s.name}/m{i}", s.url, token, PROJECT)
                for s in fleet.services["stream"] for i in range(args.monitors)]
    avail = Availability({role: fleet.urls(role) for role in ("ingest", "query", "stream")})
    stop_load, stop_watch = asyncio.Event(), asyncio.Event()
    conn = aiohttp.TCPConnector(limit=0)
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession(connector=conn) as http:
        try:
            return await _run(args, fleet, token, h, rng, monitors, avail, stop_load, stop_watch, http, tasks)
        finally:  # on a failure, nothing may go on using the session (or the fleet) behind our back
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _run(args, fleet, token, h, rng, monitors, avail, stop_load, stop_watch, http, tasks) -> dict:
    """Load, faults, quiescence, checks; every task it starts goes into ``tasks``."""
    watchers = [asyncio.create_task(m.run(stop_watch, http)) for m in monitors]
    watchers.append(asyncio.create_task(avail.run(stop_watch, http)))
    tasks += watchers
    await asyncio.sleep(3)  # monitors connected before the first event
    t0 = time.monotonic()
    load = [asyncio.create_task(Harness(i, fleet.urls("ingest"), token, PROJECT, h,
                                        random.Random(rng.getrandbits(64))).run(stop_load, http))
            for i in range(args.harnesses)]
    load += [asyncio.create_task(dashboard_reader(fleet.urls("query"), token, PROJECT, h, stop_load, http))
             for _ in range(2)]
    injector = Injector(fleet, monitors)
    faults = schedule(args.seed, args.duration)
    say(f"load started; {len(faults)} faults scheduled: " + ", ".join(f"{f.at:.0f}s {f.kind}" for f in faults))
    inject = asyncio.create_task(injector.run(faults, t0))
    tasks += [*load, inject]
    while time.monotonic() - t0 < args.duration:
        await asyncio.sleep(min(10.0, args.duration - (time.monotonic() - t0)))
        say(f"t={time.monotonic() - t0:.0f}s executions={len(h.executions)} acked={len(h.acked)} "
            f"errors={h.harness_errors} reads={h.reads_ok}/{h.reads_failed} "
            f"sse={sum(len(m.seen.log) for m in monitors)}")
    await inject  # the last fault ends before the load stops (scheduled in the first 70%)
    stop_load.set()
    await asyncio.gather(*load)
    duration = time.monotonic() - t0
    say("load stopped; waiting for quiescence")
    for s in fleet.all():
        await asyncio.to_thread(s.wait_healthy, 180)
    pool = await asyncpg.create_pool(fleet.env["DB_URL"], min_size=1, max_size=4)
    try:
        await _quiesce(pool, monitors)
        stop_watch.set()
        await asyncio.gather(*watchers)
        figures = await check.results(pool, PROJECT, h)
        kafka = await check.read_topic(fleet.env["KAFKA_BOOTSTRAP_SERVERS"], fleet.env.get("KAFKA_TOPIC", "atas.events"))
        ev, last_seq = await check.events(pool, PROJECT, kafka)
        figures |= ev | check.sse(monitors, last_seq)
        figures |= await check.query(pool, fleet.urls("query")[0], token, PROJECT, CACHE_TTL_S + 10)
    finally:
        await pool.close()
    during = sorted((end - start) * 1000 for start, end, _ok in h.batch_calls
                    if any(start < w_end and end > w_start for w_start, w_end in injector.windows))
    return {"duration_s": round(duration, 1), "seed": args.seed, "faults": injector.done, **figures,
            "max_unavailable_s": {k: round(v, 1) for k, v in avail.max_down.items()},
            "p99_ingest_ms_during_faults": round(during[int(0.99 * (len(during) - 1))], 1) if during else None,
            "harness_errors": h.harness_errors, "dashboard_reads": {"ok": h.reads_ok, "failed": h.reads_failed},
            "sse_connects": sum(m.seen.connects for m in monitors)}


async def _quiesce(pool: asyncpg.Pool, monitors: list[Monitor]) -> None:
    """The outbox drained, then no monitor saw anything new for a few heartbeats (bounded)."""
    deadline = time.monotonic() + 180
    while await pool.fetchval("SELECT count(*) FROM outbox") and time.monotonic() < deadline:
        await asyncio.sleep(1)
    sizes, still = None, 0
    while time.monotonic() < deadline and still < 4:
        now = [len(m.seen.log) for m in monitors]
        still = still + 1 if now == sizes else 0
        sizes = now
        await asyncio.sleep(2)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    fleet = Fleet()

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        # Bounded: a run that hangs (a process that never comes back) ends and cleans up anyway.
        result = asyncio.run(asyncio.wait_for(run(args, fleet), args.duration + 900))
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        fleet.close(keep=args.keep)
    print(json.dumps(result), flush=True)
    failed = sum(result.get(k) or 0 for k in ("results_lost", "results_duplicated", "results_never_sent",
                                               "counter_mismatches", "events_missing_on_kafka",
                                               "sse_gaps", "sse_duplicates", "query_mismatches"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
