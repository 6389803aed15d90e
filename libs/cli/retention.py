"""``atas retention``: remove data older than RETENTION_DAYS (the ``atas-retention`` CronJob runs this)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retention", help="remove executions, results and rollup days older than RETENTION_DAYS",
        description="Remove what is older than RETENTION_DAYS (default 90) days, counted from today's "
                    "UTC midnight: executions with all their results (whole monthly partitions of "
                    "`results` are dropped, never emptied row by row), per-test rollup days, and "
                    "outbox_dead rows older than 30 days, and the attachment objects of removed executions "
                    "(when STORAGE_URL is set). Progress goes to stderr, a summary to "
                    "stdout. Safe to run while ingest is writing: no lock is waited for longer than "
                    "--lock-timeout-ms; a busy step is retried, then left for the next run. Needs "
                    "only DB_URL (and DB_USER/DB_PASSWORD). Exit status: 0 done (also when a busy "
                    "step was deferred: see `deferred`), 1 database unreachable, 2 bad configuration.",
        epilog="Example: RETENTION_DAYS=30 atas retention --dry-run",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="count what would be removed, remove nothing")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object (rows and bytes per table) instead of a table")
    p.add_argument("--batch", type=_positive, default=5000, metavar="ROWS",
                   help="rows one transaction deletes at most (default 5000): smaller keeps each short")
    p.add_argument("--lock-timeout-ms", type=_positive, default=2000, metavar="MS",
                   help="longest wait for any lock, so the longest ingest can queue behind one (default 2000)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from atas.common.config import ConfigError, load_settings
    from atas.common.db import UNAVAILABLE_ERRORS
    from atas.common.logging import configure_logging
    from atas.common.retention import run_retention

    from .common import run_until_signalled

    # Only DB_URL and RETENTION_DAYS matter here: a CronJob need not be given Kafka or a JWT secret.
    try:
        settings = load_settings(mode="dev")
    except ConfigError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        return 2
    if settings.db is None:
        print("atas: DB_URL is required for `atas retention`", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, service="retention")

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[retention] {message}", file=sys.stderr, flush=True)

    progress(f"keeping {settings.retention_days} days (RETENTION_DAYS)" + ("; dry run" if args.dry_run else ""))
    async def work() -> int:
        try:
            report = await run_retention(settings.db.dsn, days=settings.retention_days, dry_run=args.dry_run,
                                         batch=args.batch, lock_timeout_ms=args.lock_timeout_ms,
                                         progress=progress, storage=settings.storage,
                                         jwt_secret=settings.jwt_secret)
        except UNAVAILABLE_ERRORS as exc:
            print(f"atas: cannot reach the database at {settings.db.redacted()}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
        print(json.dumps(report.to_dict()) if args.json else describe(report))
        return 0

    # The CronJob's PID 1, like `atas migrate`: SIGTERM must stop it (each step is one transaction,
    # rolled back; the next run picks up where this one stopped).
    return run_until_signalled(work(), "retention")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def describe(report) -> str:
    """The human summary: what was (or would be) removed, per table, and what was left for later."""
    verb = "would remove" if report.dry_run else "removed"
    cutoff = report.cutoff.isoformat().replace("+00:00", "Z")
    lines = [f"retention: keep {report.days} days; {verb} everything started before {cutoff}"
             + (" (dry run: nothing removed)" if report.dry_run else "")]
    lines.append(f"  {'table':<26} {'rows':>12} {'bytes':>10}")
    for table, tally in report.removed.items():
        lines.append(f"  {table:<26} {tally.rows:>12,} {_size(tally.bytes):>10}")
    if report.partitions_dropped:
        lines.append(f"  partitions {'to drop' if report.dry_run else 'dropped'}: {', '.join(report.partitions_dropped)}")
    for what in report.deferred:
        lines.append(f"  deferred (busy, left for the next run): {what}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    lines.append(f"  took {report.seconds:.1f} s")
    return "\n".join(lines)
