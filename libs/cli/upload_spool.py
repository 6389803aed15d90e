"""``atas upload-spool FILE...``: send what the pytest plugin spooled while ATAS was unreachable."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upload-spool", help="send results the pytest plugin spooled while ATAS was unreachable",
        description="Replay spool files written by the ATAS pytest plugin (.atas-spool/<execution>.jsonl): "
                    "creates the execution if it is missing, sends its results and finishes it. Safe to "
                    "run again, or on a file whose results partly arrived: ATAS recognises the execution "
                    "and result ids the plugin chose and stores nothing twice.",
        epilog="Example: atas upload-spool .atas-spool/*.jsonl --url https://atas.example --token $ATAS_TOKEN",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="spool file(s)")
    p.add_argument("--url", default=None, help="ingest base URL (default: $ATAS_URL)")
    p.add_argument("--token", default=None, help="JWT with scope ingest:write (default: $ATAS_TOKEN)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--retries", type=int, default=5, help="retries on 503/connection errors (default 5)")
    p.add_argument("--delete", action="store_true", help="delete each file once it was sent completely")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atas.client import AtasError, Client
    from atas.pytest_plugin.spool import SpoolError, read_spool, replay

    url = args.url or os.environ.get("ATAS_URL")
    token = args.token or os.environ.get("ATAS_TOKEN")
    if not url or not token:
        missing = " and ".join(n for n, v in (("--url (or ATAS_URL)", url), ("--token (or ATAS_TOKEN)", token)) if not v)
        print(f"atas: {missing} required", file=sys.stderr)
        return 2
    spools = []
    for path in args.files:
        try:
            spools.append((path, read_spool(path)))
        except OSError as exc:
            print(f"atas: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except SpoolError as exc:
            print(f"atas: {exc}", file=sys.stderr)
            return 2
    failed = 0
    with Client(url, token, timeout_s=args.timeout, retries=args.retries) as client:
        for path, spool in spools:
            try:
                execution, accepted, duplicates = replay(client, spool)
            except AtasError as exc:
                where = f" (field {exc.field})" if exc.field else ""
                print(f"atas: {path}: refused: {exc}{where}", file=sys.stderr)
                failed += 1
                continue
            c = execution.counts
            print(f"{path}: execution {execution.id} in project {execution.project}: {accepted} results added, "
                  f"{duplicates} already there; now {c.total} results ({c.passed} passed, {c.failed} failed, "
                  f"{c.error} error, {c.skipped} skipped), status {execution.status}")
            if args.delete:
                path.unlink(missing_ok=True)
    return 1 if failed else 0
