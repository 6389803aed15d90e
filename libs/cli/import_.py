"""``atas import junit FILE``: upload a JUnit XML report to an ATAS ingest service."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="upload test reports (JUnit XML) to ATAS",
        description="Upload a report to the ingest API; it becomes one finished execution. Retries on "
                    "503/connection errors; uploading the same file with the same options again is harmless.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    j = kinds.add_parser(
        "junit", help="a JUnit XML report (Surefire, pytest --junitxml, jest-junit, Playwright, ...)",
        description="Example: atas import junit target/surefire-reports/TEST-x.xml --project web "
                    "--url http://localhost:8080 --token $TOKEN --branch main",
    )
    j.add_argument("file", type=Path, help="the JUnit XML file")
    j.add_argument("--project", "-p", required=True, help="project key, e.g. web")
    j.add_argument("--url", default=None, help="ingest base URL (default: $ATAS_URL)")
    j.add_argument("--token", default=None, help="JWT with scope ingest:write (default: $ATAS_TOKEN)")
    j.add_argument("--name", default=None, help="execution name (default: the report's name)")
    j.add_argument("--environment", default=None)
    j.add_argument("--branch", default=None)
    j.add_argument("--commit", default=None)
    j.add_argument("--build-url", default=None)
    j.add_argument("--execution-id", default=None, help="UUID to give the execution (default: derived from "
                                                        "the file and options, so a re-upload is recognised)")
    j.add_argument("--attachments-dir", type=Path, default=None,
                   help="upload the files the report references with [[ATTACHMENT|path]] lines (Jenkins, "
                        "GitLab, Playwright) from this folder and link them to their tests")
    j.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    j.add_argument("--retries", type=int, default=5, help="retries on 503/connection errors (default 5)")
    j.set_defaults(func=run_junit)


def run_junit(args: argparse.Namespace) -> int:
    from atas.client import AtasError, Client

    url = args.url or os.environ.get("ATAS_URL")
    token = args.token or os.environ.get("ATAS_TOKEN")
    if not url or not token:
        missing = " and ".join(n for n, v in (("--url (or ATAS_URL)", url), ("--token (or ATAS_TOKEN)", token)) if not v)
        print(f"atas: {missing} required", file=sys.stderr)
        return 2
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"atas: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        with Client(url, token, timeout_s=args.timeout, retries=args.retries) as client:
            imported = client.import_junit(args.project, data, name=args.name, environment=args.environment,
                                           branch=args.branch, commit=args.commit, build_url=args.build_url,
                                           execution_id=args.execution_id)
    except AtasError as exc:
        where = f" (field {exc.field})" if exc.field else ""
        print(f"atas: import refused: {exc}{where}", file=sys.stderr)
        return 1
    ex = imported.execution
    c, t = ex.counts, ex.tests
    verb = "imported" if imported.created else "already imported (nothing added)"
    print(f"{args.file}: {verb} as execution {ex.id} in project {ex.project}")
    # Tests first, as the harness printed them; attempts only when reruns make them differ.
    flaky = f" ({t.flaky} flaky)" if t.flaky else ""
    attempts = f"; {c.total} attempts with reruns" if c.total != t.total else ""
    print(f"  {t.total} tests: {t.passed} passed{flaky}, {t.failed} failed, {t.error} error, {t.skipped} skipped"
          f"{attempts}  → status {ex.status}")
    if imported.created and imported.duplicates:
        print(f"  {imported.duplicates} results repeated within the report were stored once")
    if args.attachments_dir is not None:
        return _upload_attachments(args, url, token, data, ex.id)
    return 0


def _inside(folder: Path, reference: str) -> Path | None:
    """The file ``reference`` names inside ``folder``, or None: a report never makes the CLI upload
    a file from outside the folder it was given (``../../etc/passwd``, absolute paths elsewhere)."""
    root = folder.resolve()
    ref = Path(reference)
    for candidate in ([ref] if ref.is_absolute() else []) + [root / ref]:
        path = candidate.resolve()
        if (root in path.parents or path == root) and path.is_file():
            return path
    return None


def _upload_attachments(args: argparse.Namespace, url: str, token: str, report: bytes, execution_id) -> int:
    from atas.client import AtasError, Client
    from atas.common.errors import ApiError
    from atas.ingest.junit import parse_junit

    try:
        references = parse_junit(report).attachments
    except ApiError:
        references = []
    uploaded, failed = 0, 0
    with Client(url, token, timeout_s=args.timeout, retries=args.retries) as client:
        for test_id, attempt, reference in references:
            path = _inside(args.attachments_dir, reference)
            if path is None:
                print(f"  attachment {reference!r} of {test_id}: not found in {args.attachments_dir}", file=sys.stderr)
                failed += 1
                continue
            try:
                client.attach(execution_id, path, test_id=test_id, attempt=attempt)
                uploaded += 1
            except AtasError as exc:
                print(f"  attachment {reference!r} of {test_id}: {exc}", file=sys.stderr)
                failed += 1
    print(f"  {uploaded} attachments uploaded" + (f", {failed} not" if failed else ""))
    return 1 if failed else 0
