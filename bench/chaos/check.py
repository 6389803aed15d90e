"""The checks of a chaos run's history, after quiescence: results against PostgreSQL, events
against the Kafka log, each monitor's view against the Kafka log, query answers against SQL."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer

from .fleet import say
from .load import History
from .monitor import Monitor


async def results(pool: asyncpg.Pool, project: str, h: History) -> dict:
    rows = await pool.fetch("SELECT id::text AS id, count(*) AS n FROM results WHERE project = $1 GROUP BY id",
                            project)
    stored = {r["id"]: r["n"] for r in rows}
    bad_counters = await pool.fetchval("""
        SELECT count(*) FROM executions e LEFT JOIN LATERAL (
            SELECT count(*) AS total, count(*) FILTER (WHERE status = 'passed') AS passed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'skipped') AS skipped,
                   count(*) FILTER (WHERE status = 'error') AS errored
            FROM results r WHERE r.execution_id = e.id AND r.execution_started_at = e.started_at) c ON true
        WHERE e.project = $1 AND (e.total, e.passed, e.failed, e.skipped, e.errored)
              IS DISTINCT FROM (c.total, c.passed, c.failed, c.skipped, c.errored)""", project)
    return {"results_acked": len(h.acked), "results_stored": sum(stored.values()),
            "results_lost": len(h.acked - stored.keys()),
            "results_duplicated": sum(n - 1 for n in stored.values() if n > 1),
            "results_never_sent": len(stored.keys() - h.sent),
            "counter_mismatches": bad_counters}


async def read_topic(bootstrap: str, topic: str) -> list[dict]:
    """Every event on the topic, from the beginning (no consumer group: nothing is committed)."""
    # Subscribed without a group: every partition is assigned to this consumer, read from offset 0.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.2)
        parts = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[dict] = []
        deadline = time.monotonic() + 120
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in parts])

        while await behind() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                out.extend(msgspec.json.decode(r.value) for r in records)
        return out
    finally:
        await consumer.stop()


async def events(pool: asyncpg.Pool, project: str, kafka: list[dict]) -> tuple[dict, dict[str, int]]:
    """Every event an execution was given (seq 1..last_seq, written to the outbox with the data)
    must be on Kafka; the same (execution, seq) under two event ids is a real duplicate."""
    last = {r["id"]: r["last_seq"] for r in await pool.fetch(
        "SELECT id::text AS id, last_seq FROM executions WHERE project = $1", project)}
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in kafka:
        if e.get("project") == project:
            ids[(e["execution_id"], e["seq"])].add(e["id"])
    missing = sum(1 for exe, n in last.items() for seq in range(1, n + 1) if (exe, seq) not in ids)
    waiting = await pool.fetchval("SELECT count(*) FROM outbox")
    dead = await pool.fetchval("SELECT count(*) FROM outbox_dead")
    return ({"events_published": sum(last.values()), "events_missing_on_kafka": missing,
             "events_duplicated_on_kafka": sum(len(v) - 1 for v in ids.values()),
             "kafka_records": len(kafka), "outbox_left": waiting, "outbox_dead": dead}, last)


def sse(monitors: list[Monitor], last_seq: dict[str, int]) -> dict:
    """Per monitor and execution: each seq once and in order, unless a `reset` came in between;
    at the end each monitor holds the execution's last event (or saw a reset it must act on)."""
    gaps = dups = resets = 0
    details: list[str] = []
    for m in monitors:
        cur: dict[str, int] = {}
        reset_seen = False
        for entry in m.seen.log:
            if entry[0] == "reset":
                resets += 1
                reset_seen = True
                cur.clear()
                continue
            _, exe, seq, _id = entry
            prev = cur.get(exe)
            if prev is None:
                if not reset_seen and seq != 1:
                    gaps += 1
                    details.append(f"{m.name}: {exe} began at seq {seq}")
            elif seq <= prev:
                dups += 1
                details.append(f"{m.name}: {exe} seq {seq} after {prev}")
                continue
            elif seq != prev + 1:
                gaps += 1
                details.append(f"{m.name}: {exe} seq {prev} -> {seq}")
            cur[exe] = seq
        for exe, n in last_seq.items():
            seen = cur.get(exe)
            if (seen is None and not reset_seen and n > 0) or (seen is not None and seen < n):
                gaps += 1
                details.append(f"{m.name}: {exe} ends at {seen} of {n}")
    for d in details[:20]:
        say("sse: " + d)
    return {"sse_gaps": gaps, "sse_duplicates": dups, "sse_resets": resets}


async def query(pool: asyncpg.Pool, url: str, token: str, project: str, wait_s: float) -> dict:
    """Query's answers against the same numbers in SQL, retried until ``wait_s`` has passed (a
    cached answer may be as old as its TTL); what still differs then is a mismatch."""
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + wait_s
    first: int | None = None
    async with aiohttp.ClientSession(headers=auth, timeout=aiohttp.ClientTimeout(total=30)) as http:
        while True:
            wrong = []
            rows = await pool.fetch("SELECT id::text AS id, total, passed, failed, skipped, errored, status "
                                    "FROM executions WHERE project = $1", project)
            for r in rows:
                async with http.get(f"{url}/v1/executions/{r['id']}", params={"project": project}) as resp:
                    got = await resp.json() if resp.status == 200 else {"status_code": resp.status}
                want = {"total": r["total"], "passed": r["passed"], "failed": r["failed"],
                        "skipped": r["skipped"], "error": r["errored"]}
                counts = got.get("counts") or {}
                # `total` is not in every version of the response; the per-status numbers are.
                if ({k: counts.get(k, 0) for k in want if k != "total" or "total" in counts}
                        != {k: v for k, v in want.items() if k != "total" or "total" in counts}
                        or got.get("status") != r["status"]):
                    wrong.append(f"execution {r['id']}: query {got.get('counts')} {got.get('status')}, "
                                 f"SQL {want} {r['status']}")
            async with http.get(f"{url}/v1/dashboard/overview", params={"project": project}) as resp:
                ov = await resp.json() if resp.status == 200 else {}
            want_ov = (len(rows), sum(r["total"] for r in rows))
            if (ov.get("executions"), ov.get("results")) != want_ov:
                wrong.append(f"overview: query {(ov.get('executions'), ov.get('results'))}, SQL {want_ov}")
            if first is None:
                first = len(wrong)
            if not wrong or time.monotonic() > deadline:
                for w in wrong[:10]:
                    say("query: " + w)
                return {"query_mismatches": len(wrong), "query_stale_at_quiescence": first}
            await asyncio.sleep(2)
