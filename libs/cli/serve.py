"""``atas serve ingest|query|stream``: run one service (what each Deployment's ``args`` selects)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

SERVICES = ("ingest", "query", "stream")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run one service: ingest, query or stream",
        description="Run one ATAS service until SIGTERM/SIGINT, then drain and stop. Configuration "
                    "comes from the environment (DB_URL, REDIS_HOST, KAFKA_BOOTSTRAP_SERVERS, "
                    "JWT_SECRET, PORT, ...).",
    )
    p.add_argument("service", choices=SERVICES, help="which service to run")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: $PORT or 8080)")
    p.add_argument("--migrate", action="store_true",
                   help="apply pending database migrations before serving (safe with many replicas)")
    p.set_defaults(func=run)


# The stream service never touches PostgreSQL: it is started without a pool (and DB_URL, shared
# in the ConfigMap, is ignored), so a database outage cannot take live connections down.
USES_DB = {"ingest": True, "query": True, "stream": False}


def run(args: argparse.Namespace) -> int:
    import msgspec

    from atas.cli.common import configs_or_exit
    from atas.common.logging import configure_logging

    uses_db = USES_DB[args.service]
    if args.migrate and not uses_db:
        print(f"atas: --migrate: the {args.service} service does not use the database", file=sys.stderr)
        return 2
    settings, configs = configs_or_exit([args.service], mode="serve", need_db=uses_db)
    if not uses_db:
        settings = msgspec.structs.replace(settings, db=None)
    configure_logging(settings.log_level, service=args.service)
    return asyncio.run(_serve(settings, configs[args.service], args))


async def _serve(settings, config, args) -> int:
    from atas.common.app import create_app, serve
    from atas.common.engines import install_engines
    from atas.common.logging import get_logger
    from atas.common.migrate import MigrationError, migrate_dsn

    log = get_logger("atas.serve")
    module = importlib.import_module(f"atas.{args.service}.app")
    if args.migrate:
        try:
            applied = await migrate_dsn(settings.db.dsn)
        except MigrationError as exc:
            log.error("migration refused", error=str(exc))
            return 3
        log.info("migrations up to date", applied=len(applied))
    max_size = getattr(module, "client_max_size", None)
    app = create_app(settings, args.service,
                     client_max_size=max_size(config) if max_size else 1024 ** 2)
    install_engines(app, application_name=f"atas-{args.service}")
    module.setup(app, config)
    await serve(app, host=args.host, port=args.port or settings.port, drain_seconds=settings.drain_seconds)
    return 0
