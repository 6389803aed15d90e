"""What the pytest plugin costs a suite: the same trivial suite with and without it, in the same run.

    scripts/bench pytest-plugin [--tests 5000] [--rounds 7]

A generated suite of ``--tests`` trivial tests (``--modules`` files of plain functions) runs in a
pytest subprocess, alternately

* without the plugin (``-p no:atas``): the floor, and
* with the plugin reporting to a real ``atas serve ingest`` subprocess (its relay publishing to
  Kafka meanwhile), which is the whole cost a user sees: the session's wall time from process start
  to exit, including creating the execution, streaming the batches and finishing it.

Each round runs the sides back to back (in reverse order every other round), so a pair shares
the machine's load; ``overhead_pct`` is the median over rounds of the pair's ratio. On the shared
2-core VM a 4 s suite swings by ±50 % between rounds, so take several rounds; the fastest-round
comparison and the CPU time of the pytest process (all threads, the sender's included) are
printed too. After each
reporting round the bench counts the results stored for that round's execution in PostgreSQL.

Servers come from the environment (``eval "$(atas stack env)"``) or a private stack started in a
temp folder; a fresh database is dropped afterwards. Progress goes to stderr; the last stdout line
is one JSON object: overhead_pct (goal ≤ 5), results_stored and results_expected (goal: all),
spooling_overhead_pct (the same suite with ATAS down), server_cpu_s (what the co-located server
took from the same cores), ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from atas.common.db import create_database, drop_database
from atas.common.stack import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Server, servers  # noqa: E402 - bench/ingest.py: the same private stack and server

PROJECT = "bench"


def say(message: str) -> None:
    print(f"[bench pytest-plugin] {message}", file=sys.stderr, flush=True)


def write_suite(directory: Path, tests: int, modules: int) -> None:
    """``tests`` trivial test functions over ``modules`` files: what pytest itself costs per test."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    per_module = -(-tests // modules)
    made = 0
    for m in range(modules):
        count = min(per_module, tests - made)
        if count <= 0:
            break
        body = "".join(f"def test_{m}_{i}():\n    assert {i} == {i}\n\n\n" for i in range(count))
        (directory / f"test_mod{m}.py").write_text(body)
        made += count


def run_suite(directory: Path, args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, all threads) and output of one pytest session."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
                           "-p", "no:randomly", *args], cwd=directory, env=env, capture_output=True, text=True,
                          timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"pytest exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def execution_of(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("atas: ") and "reported to execution" in line:
            return line.split("reported to execution ")[1].split()[0]
        if line.startswith("atas: ") and "spooled" in line:
            raise RuntimeError(f"the plugin spooled results instead of sending them: {line}")
    raise RuntimeError(f"no report line from the plugin in:\n{output[-2000:]}")


async def stored(dsn: str, execution_id: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM results WHERE execution_id = $1::uuid", execution_id)
        status = await conn.fetchval("SELECT status FROM executions WHERE id = $1::uuid", execution_id)
    finally:
        await conn.close()
    return count, status


async def run(args: argparse.Namespace) -> dict:
    from atas.common.auth import mint_token
    from atas.common.config import parse_db_url

    with tempfile.TemporaryDirectory(prefix="atas-bench-") as tmp:
        tmp_path = Path(tmp)
        env = await asyncio.to_thread(servers, tmp_path / "stack")
        dsn = await create_database(parse_db_url(env["DB_URL"]), f"atas_bench_{secrets.token_hex(4)}", migrate=True)
        server = None
        try:
            server = Server({"DB_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
                             "KAFKA_TOPIC": f"atas.events.bench-{secrets.token_hex(3)}",
                             "JWT_SECRET": env["JWT_SECRET"], "LOG_LEVEL": "warning"}, tmp_path / "ingest.log")
            await server.wait_ready()
            token = mint_token(env["JWT_SECRET"], subject="bench", scopes=["ingest:write"], projects=[PROJECT])
            suite = tmp_path / "suite"
            write_suite(suite, args.tests, args.modules)
            base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ATAS_", "PYTEST_"))}
            plugin_env = {**base_env, "ATAS_URL": server.url, "ATAS_TOKEN": token, "ATAS_PROJECT": PROJECT}
            say(f"{args.tests} tests in {args.modules} modules; warming up")
            await asyncio.to_thread(run_suite, suite, ["-p", "no:atas"], base_env)  # compiles .pyc files
            # The third side: the plugin with ATAS unreachable (everything spooled). It has the
            # plugin's own work in the pytest process without the server competing for the same
            # cores, which on this machine it does (in production ATAS runs elsewhere).
            down_env = {**plugin_env, "ATAS_URL": f"http://127.0.0.1:{free_port()}",
                        "ATAS_SPOOL_DIR": str(tmp_path / "spool")}
            plain_wall, plain_cpu, with_wall, with_cpu, down_wall, counts, statuses = [], [], [], [], [], [], []
            server_cpu = []

            async def plain() -> None:
                wall, cpu, _ = await asyncio.to_thread(run_suite, suite, ["-p", "no:atas"], base_env)
                plain_wall.append(wall)
                plain_cpu.append(cpu)

            async def reporting() -> None:
                cpu0 = server.cpu_seconds()
                wall, cpu, output = await asyncio.to_thread(run_suite, suite, [], plugin_env)
                server_cpu.append(server.cpu_seconds() - cpu0)
                with_wall.append(wall)
                with_cpu.append(cpu)
                count, status = await stored(dsn, execution_of(output))
                counts.append(count)
                statuses.append(status)

            async def spooling() -> None:
                down_wall.append((await asyncio.to_thread(run_suite, suite, [], down_env))[0])

            for n in range(1, args.rounds + 1):
                # ABC, then CBA: a load that drifts during a round favours neither side.
                for side in (plain, reporting, spooling) if n % 2 else (spooling, reporting, plain):
                    await side()
                wall, cpu, down, count, status = with_wall[-1], with_cpu[-1], down_wall[-1], counts[-1], statuses[-1]
                say(f"round {n}: without {plain_wall[-1]:.2f} s ({plain_cpu[-1]:.2f} CPU s), with the plugin "
                    f"{wall:.2f} s ({cpu:.2f} CPU s, server {server_cpu[-1]:.2f} CPU s) → "
                    f"{100 * (wall / plain_wall[-1] - 1):+.1f} %; {count} results stored, execution {status}; "
                    f"ATAS down (spooling) {down:.2f} s")
        finally:
            if server is not None:
                server.stop()
            await drop_database(dsn)
            if (tmp_path / "stack" / "state.json").exists():
                from atas.common.stack import Stack

                Stack(tmp_path / "stack").down(purge=True)
    ratios = [w / p - 1 for w, p in zip(with_wall, plain_wall)]
    return {
        "bench": "pytest-plugin", "tests": args.tests, "rounds": args.rounds,
        "without_s": round(statistics.median(plain_wall), 3), "with_s": round(statistics.median(with_wall), 3),
        "overhead_pct": round(100 * statistics.median(ratios), 1),
        "overhead_pct_fastest": round(100 * (min(with_wall) / min(plain_wall) - 1), 1),
        "overhead_pct_rounds": [round(100 * r, 1) for r in ratios],
        "cpu_overhead_pct": round(100 * (statistics.median(with_cpu) / statistics.median(plain_cpu) - 1), 1),
        "server_cpu_s": round(statistics.median(server_cpu), 2),
        "spooling_s": round(statistics.median(down_wall), 3),
        "spooling_overhead_pct": round(100 * statistics.median(d / p - 1 for d, p in zip(down_wall, plain_wall)), 1),
        "results_stored": min(counts), "results_expected": args.tests,
        "statuses": sorted(set(statuses)), "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench pytest-plugin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=5000, help="trivial tests in the suite (default 5000)")
    parser.add_argument("--modules", type=int, default=50, help="test files they are spread over (default 50)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="rounds of without/with (default 7)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
