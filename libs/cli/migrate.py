"""``atas migrate``: apply pending database migrations (the Kubernetes migration Job runs this)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate", help="apply pending database migrations",
        description="Apply the versioned SQL migrations shipped with this build to DB_URL, under an "
                    "advisory lock (safe to run from many processes at once). Exits 3 when an applied "
                    "migration was changed.",
    )
    p.add_argument("--list", action="store_true", help="only list the migrations this build ships")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atas.common.migrate import MigrationError, load_migrations, migrate_dsn

    if args.list:
        for m in load_migrations():
            print(f"V{m.version:03d}  {m.description:40s} {m.checksum[:12]}")
        return 0
    from atas.common.logging import configure_logging

    # Only DB_URL matters here; don't demand Kafka or a JWT secret from a migration Job.
    from atas.common.config import ConfigError, load_settings

    try:
        settings = load_settings(mode="dev")
    except ConfigError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        return 2
    if settings.db is None:
        print("atas: DB_URL is required for `atas migrate`", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, service="migrate")
    from atas.common.db import UNAVAILABLE_ERRORS

    from .common import run_until_signalled

    async def apply() -> int:
        try:
            applied = await migrate_dsn(settings.db.dsn)
        except MigrationError as exc:
            print(f"atas: migration refused: {exc}", file=sys.stderr)
            return 3
        except UNAVAILABLE_ERRORS as exc:
            print(f"atas: cannot reach the database at {settings.db.redacted()}: {type(exc).__name__}: {exc}; "
                  "check DB_URL and that PostgreSQL is up", file=sys.stderr)
            return 1
        print(f"migrations up to date ({len(applied)} applied now)", file=sys.stderr)
        return 0

    # A Job's PID 1: SIGTERM must stop it (the migration in progress rolls back).
    return run_until_signalled(apply(), "migrate")
