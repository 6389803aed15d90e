"""``atas attach EXECUTION FILE...``: upload screenshots, videos, traces or logs to an execution
(or to one test's attempt), straight to object storage, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attach", help="upload files as attachments of an execution or a test",
        description="Create → upload (multipart when large) → complete, for each file; retries storage errors "
                    "and renews expired URLs. Example: atas attach $RUN shots/login.png --test-id login::ok",
    )
    p.add_argument("execution", help="execution id (UUID)")
    p.add_argument("files", nargs="+", type=Path, help="the files")
    p.add_argument("--test-id", default=None, help="link to this test (default: the whole execution)")
    p.add_argument("--attempt", type=int, default=None, help="the test's attempt (default 1)")
    p.add_argument("--kind", choices=("screenshot", "video", "trace", "log", "other"), default=None,
                   help="default: from the content type (image → screenshot, video, zip → trace, text → log)")
    p.add_argument("--url", default=None, help="ingest base URL (default: $ATAS_URL)")
    p.add_argument("--token", default=None, help="JWT with scope ingest:write (default: $ATAS_TOKEN)")
    p.add_argument("--retries", type=int, default=5, help="retries per request (default 5)")
    p.set_defaults(func=run)


def _bar(name: str):
    if not sys.stderr.isatty():
        return None

    def show(sent: int, total: int) -> None:
        done = sent / total if total else 1.0
        filled = int(done * 30)
        print(f"\r  {name[:30]:30s} [{'#' * filled}{'.' * (30 - filled)}] {done:4.0%}", end="", file=sys.stderr,
              flush=True)
        if sent >= total:
            print(file=sys.stderr)

    return show


def run(args: argparse.Namespace) -> int:
    from atas.client import AtasError, Client

    url = args.url or os.environ.get("ATAS_URL")
    token = args.token or os.environ.get("ATAS_TOKEN")
    if not url or not token:
        print("atas: --url (or ATAS_URL) and --token (or ATAS_TOKEN) are required", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"atas: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    failed = 0
    with Client(url, token, retries=args.retries) as client:
        for path in args.files:
            try:
                stored = client.attach(args.execution, path, test_id=args.test_id, attempt=args.attempt,
                                       kind=args.kind, progress=_bar(path.name))
            except AtasError as exc:
                where = f" (field {exc.field})" if exc.field else ""
                print(f"atas: {path}: {exc}{where}", file=sys.stderr)
                failed += 1
                continue
            print(f"{path}: {stored.id} {stored.kind} {stored.size_bytes} B  {stored.download}")
    return 1 if failed else 0
