"""``atas load``: a synthetic harness that reports realistic test runs to an ingest endpoint.

Each test of the synthetic suite has a stable profile, so dashboards show what real suites show:
most runs pass. Durations are log-normal (a few tests are slow); one test regresses now and then;
a test or two are broken on feature branches only; a handful are flaky — they fail now and then and
usually pass on a retry, sometimes not even then — and a few are skipped. Commits are run twice
(a scheduled run and a re-run of the same commit and environment), so a flaky test shows up as one
whose outcome differed on the same commit (`flaky_commits`) as well as by its retry passes. Failed
tests are retried up to ``--retries`` times, each attempt reported as a result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import msgspec

from atas.common.schemas import ExecutionCreate, ExecutionFinish, ResultBatch, ResultIn

_MODULES = ["auth", "billing", "checkout", "search", "profile", "orders", "cart", "inventory", "api",
            "notifications", "reports", "admin", "payments", "shipping", "catalog"]
_FEATURES = ["login", "logout", "refund", "create", "update", "delete", "list", "filter", "sort",
             "export", "import", "retry", "timeout", "paginate", "validate", "render", "sync"]
_ERRORS = [
    ("AssertionError", "expected status 200, got 500"),
    ("AssertionError", "expected 3 items, got 2"),
    ("TimeoutError", "element #submit not visible after 30000 ms"),
    ("ConnectionResetError", "connection reset by peer while reading response"),
    ("KeyError", "'total'"),
]


@dataclass(frozen=True)
class TestProfile:
    test_id: str
    name: str
    suite: str
    file: str
    median_ms: float
    fail_p: float     # chance an attempt fails for a real reason (sticks across retries)
    flaky_p: float    # chance an attempt fails intermittently (a retry usually passes)
    skip: bool
    error_p: float
    sticky_p: float = 0.0         # flaky: chance the intermittent failure lasts through every retry
    feature_only: bool = False    # broken on feature branches only (fail_p applies there)


def make_suite(n: int, rng: random.Random) -> list[TestProfile]:
    """``n`` tests: a handful flaky, one or two broken on feature branches, one that regresses now
    and then, ~3% skipped, the rest healthy. The counts are fixed, not proportional, so a run of a
    big suite still passes most of the time, as real suites do."""
    flaky = set(rng.sample(range(n), min(n, max(2, min(5, n // 30)))))
    rest = [i for i in range(n) if i not in flaky]
    broken = set(rng.sample(rest, min(len(rest), max(1, n // 100))))
    rest = [i for i in rest if i not in broken]
    regressing = set(rng.sample(rest, min(len(rest), 1)))
    suite = []
    for i in range(n):
        module = _MODULES[i % len(_MODULES)]
        feature = _FEATURES[(i // len(_MODULES)) % len(_FEATURES)]
        file = f"tests/{module}/test_{module}.py"
        name = f"test_{feature}_{i}"
        suite.append(TestProfile(
            test_id=f"{file}::{name}", name=name, suite=f"tests.{module}", file=file,
            # log-normal durations with a long tail: most tests are fast, a few take seconds
            median_ms=rng.lognormvariate(4.5, 1.0),
            fail_p=0.8 if i in broken else 0.03 if i in regressing else 0.0,
            feature_only=i in broken,
            flaky_p=0.2 if i in flaky else 0.0,
            sticky_p=0.03 if i in flaky else 0.0,
            skip=i not in flaky and i not in broken and rng.random() < 0.03,
            error_p=0.0002,
        ))
    return suite


@dataclass
class Summary:
    executions: int = 0
    results: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0, "skipped": 0, "error": 0})
    retries: int = 0
    http_errors: int = 0
    elapsed_s: float = 0.0

    def describe(self) -> str:
        rate = self.results / self.elapsed_s if self.elapsed_s else 0.0
        statuses = ", ".join(f"{v} {k}" for k, v in self.by_status.items())
        return (f"{self.executions} executions, {self.results} results ({statuses}; {self.retries} retries) "
                f"in {self.elapsed_s:.1f}s = {rate:,.0f} results/s; {self.http_errors} HTTP errors")


def run_execution_results(suite: list[TestProfile], rng: random.Random, retries: int,
                          broken_branch: bool) -> list[ResultIn]:
    """Every attempt of every test of one execution, in the order a harness would report them."""
    out: list[ResultIn] = []
    for t in suite:
        if t.skip:
            out.append(ResultIn(test_id=t.test_id, name=t.name, suite=t.suite, file=t.file, status="skipped",
                                duration_ms=0))
            continue
        fail_p = t.fail_p if broken_branch or not t.feature_only else 0.0
        real_failure = rng.random() < fail_p or rng.random() < t.sticky_p
        for attempt in range(1, retries + 2):
            duration = int(max(1.0, rng.gauss(t.median_ms, t.median_ms * 0.15)))
            if rng.random() < t.error_p:
                status, err = "error", ("RuntimeError", "fixture 'db' failed during setup")
            elif real_failure or rng.random() < t.flaky_p:
                status, err = "failed", rng.choice(_ERRORS)
            else:
                status, err = "passed", None
            out.append(ResultIn(
                test_id=t.test_id, name=t.name, suite=t.suite, file=t.file, status=status, attempt=attempt,
                duration_ms=duration, error_type=err[0] if err else None, error_message=err[1] if err else None,
                error_trace=(f'  File "{t.file}", line {10 + attempt}, in {t.name}\n    assert response.ok\n'
                             if err else None),
                attachments=([{"uri": f"s3://atas-artifacts/{t.name}/{attempt}.png", "kind": "screenshot",
                               "content_type": "image/png"}] if status == "failed" else []),
            ))
            if status == "passed" or attempt > retries:
                break
    return out


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if not self.tty and now - self._last < 2 and self.done < self.total:
            return
        self._last = now
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} executions "
                f"({now - self.started:.1f}s)")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


async def run_load(url: str, token: str, *, project: str, executions: int, tests: int, batch: int = 200,
                   concurrency: int = 4, retries: int = 2, days: float = 7.0, seed: int | None = None,
                   progress: bool = True) -> Summary:
    """Report ``executions`` synthetic runs of a ``tests``-test suite to ``url``; returns a summary."""
    import aiohttp

    rng = random.Random(seed)
    suite = make_suite(tests, rng)
    base = rng.random()  # per-execution generators derive from it: reproducible with --seed
    summary = Summary()
    bar = _Progress(executions, progress)
    encoder = msgspec.json.Encoder()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    now = datetime.now(timezone.utc)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(executions):
        queue.put_nowait(i)
    started = time.perf_counter()

    async def post(session: aiohttp.ClientSession, path: str, body: msgspec.Struct) -> None:
        for attempt in range(5):
            async with session.post(url.rstrip("/") + path, data=encoder.encode(body), headers=headers) as r:
                if r.status < 300:
                    await r.read()
                    return
                text = await r.text()
                if r.status in (429, 502, 503, 504):
                    summary.http_errors += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", 2 ** attempt * 0.1)))
                    continue
                raise RuntimeError(f"POST {path} → {r.status}: {text[:500]}")
        raise RuntimeError(f"POST {path} kept failing; is the server up?")

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            exec_rng = random.Random(f"{base}-{i}")
            # Executions come in pairs on one commit and environment (a scheduled run and its re-run),
            # as CI re-runs do: that is where a flaky test is seen passing and failing on one commit.
            commit_rng = random.Random(f"{base}-commit-{i // 2}")
            branch = commit_rng.choice(["main", "main", "main", "release/2.4", f"feature/{commit_rng.choice(_FEATURES)}"])
            environment = commit_rng.choice(["ci", "ci", "staging"])
            commit = f"{commit_rng.getrandbits(160):040x}"
            # spread start times evenly over the last `days`, oldest first
            started_at = now - timedelta(days=days) * (1 - (i + 1) / executions) if days else now
            exec_id = uuid.uuid4()
            kind = "nightly" if branch == "main" else "pr build"
            await post(session, "/v1/executions", ExecutionCreate(
                project=project, id=exec_id, name=f"{kind} #{i + 1}" + (" (re-run)" if i % 2 else ""),
                environment=environment, branch=branch, commit=commit,
                build_url=f"https://ci.example/builds/{i + 1}",
                started_at=started_at, attributes={"runner": f"runner-{exec_rng.randint(1, 8)}", "synthetic": True},
            ))
            results = run_execution_results(suite, exec_rng, retries, broken_branch=branch.startswith("feature/"))
            for j in range(0, len(results), batch):
                await post(session, f"/v1/executions/{exec_id}/results", ResultBatch(results=results[j:j + batch]))
            await post(session, f"/v1/executions/{exec_id}/finish", ExecutionFinish(
                finished_at=started_at + timedelta(milliseconds=sum(r.duration_ms or 0 for r in results))))
            summary.executions += 1
            summary.results += len(results)
            for r in results:
                summary.by_status[r.status] += 1
                summary.retries += r.attempt > 1
            bar.advance()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            await asyncio.gather(*(worker(session) for _ in range(max(1, concurrency))))
        finally:
            bar.close()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load", help="report synthetic, realistic test runs (a load generator and demo-data maker)",
        description="Act as a test harness: report EXECUTIONS runs of a TESTS-test suite with realistic "
                    "failures, retries, flaky and slow tests to the ingest API, with a progress bar and "
                    "a summary at the end.",
    )
    p.add_argument("--url", default=os.environ.get("ATAS_URL", "http://127.0.0.1:8080"),
                   help="ingest base URL (default: $ATAS_URL or http://127.0.0.1:8080)")
    p.add_argument("--token", default=os.environ.get("ATAS_TOKEN"),
                   help="JWT with ingest:write for the project (default: $ATAS_TOKEN)")
    p.add_argument("--project", "-p", default="demo", help="project key (default: demo)")
    p.add_argument("--executions", "-n", type=int, default=20, help="executions to report (default 20)")
    p.add_argument("--tests", "-t", type=int, default=200, help="tests in the synthetic suite (default 200)")
    p.add_argument("--batch", type=int, default=200, help="results per request (default 200)")
    p.add_argument("--concurrency", "-c", type=int, default=4, help="executions reported at once (default 4)")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed test (default 2)")
    p.add_argument("--days", type=float, default=7.0,
                   help="spread execution start times over the last DAYS days (default 7; 0 = now)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible data set")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("atas: a token is required: --token or $ATAS_TOKEN (mint one with `atas token -p PROJECT "
              "-s ingest:write`)", file=sys.stderr)
        return 2
    for name in ("executions", "tests", "batch", "concurrency"):
        if getattr(args, name) < 1:
            print(f"atas: --{name} must be at least 1", file=sys.stderr)
            return 2
    import aiohttp

    try:
        summary = asyncio.run(run_load(args.url, args.token, project=args.project, executions=args.executions,
                                       tests=args.tests, batch=args.batch, concurrency=args.concurrency,
                                       retries=args.retries, days=args.days, seed=args.seed))
    except (RuntimeError, OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        print(f"atas: load failed: {exc or type(exc).__name__} (is ingest running at {args.url}?)", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0
