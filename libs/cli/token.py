"""``atas token``: mint a JWT for a project and scopes.

The signing secret is ``--secret``, else ``JWT_SECRET``, else the secret ``atas dev`` keeps in
``<data-dir>/jwt_secret`` — so next to a running ``atas dev`` a project-scoped token is one command:
``atas token -p web -s ingest:write``. Claims: ``sub``, ``iss`` (``atas``), ``iat``, ``exp``,
``scopes`` and ``projects`` (README "Tokens").
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from atas.common.auth import SCOPES

MIN_SECRET_BYTES = 32  # the servers refuse a shorter JWT_SECRET (HS256 wants a key of the hash's size)


def register(sub: argparse._SubParsersAction) -> None:
    from .dev import default_data_dir

    p = sub.add_parser(
        "token", help="mint a JWT for projects and scopes",
        description="Print a JWT (HS256) signed with --secret, else $JWT_SECRET, else the secret of "
                    f"`atas dev` in <data-dir>/jwt_secret (default {default_data_dir()}). Example: "
                    "atas token --project web --scope ingest:write --ttl 86400",
    )
    p.add_argument("--project", "-p", action="append", required=True,
                   help="project the token may touch (repeat for several; '*' for all)")
    p.add_argument("--scope", "-s", action="append", choices=SCOPES,
                   help="scope to grant (repeat; default: all three)")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600). Every token expires; for a CI "
                        "harness mint one per pipeline, or a long-lived one (e.g. 31536000, a year) "
                        "and rotate JWT_SECRET to revoke")
    p.add_argument("--subject", default=os.environ.get("USER", "atas-cli"), help="the token's subject (sub)")
    p.add_argument("--secret", default=None, help="signing secret (default: $JWT_SECRET, else atas dev's)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data folder of `atas dev` whose secret to use when JWT_SECRET is unset "
                        "(default: $ATAS_DATA_DIR or the user data folder)")
    p.set_defaults(func=run)


def _secret(args: argparse.Namespace) -> tuple[str | None, str]:
    """(secret, where it came from)."""
    from .dev import default_data_dir

    if args.secret:
        return args.secret, "--secret"
    if os.environ.get("JWT_SECRET", "").strip():
        return os.environ["JWT_SECRET"], "JWT_SECRET"
    path = (args.data_dir or Path(os.environ.get("ATAS_DATA_DIR") or default_data_dir())) / "jwt_secret"
    if path.is_file():
        return path.read_text().strip(), str(path)
    return None, str(path)


def run(args: argparse.Namespace) -> int:
    from atas.common.auth import mint_token
    from atas.common.schemas import PROJECT_KEY_PATTERN

    secret, source = _secret(args)
    if not secret:
        print(f"atas: no signing secret: JWT_SECRET is not set and {source} does not exist (it appears "
              "when `atas dev` first runs); export JWT_SECRET or pass --secret", file=sys.stderr)
        return 2
    if len(secret.encode()) < MIN_SECRET_BYTES:
        print(f"atas: the secret from {source} is {len(secret.encode())} bytes; the servers require at least "
              f"{MIN_SECRET_BYTES} (generate one with `openssl rand -base64 32`)", file=sys.stderr)
        return 2
    bad = [p for p in args.project if p != "*" and not re.search(PROJECT_KEY_PATTERN, p)]
    if bad:
        print(f"atas: {', '.join(map(repr, bad))} is not a project key the API accepts: 1 to 128 letters, "
              "digits, '.', '_' or '-', starting with a letter or digit (or '*' for all)", file=sys.stderr)
        return 2
    try:
        token = mint_token(secret, subject=args.subject, scopes=args.scope or SCOPES, projects=args.project,
                           ttl_seconds=args.ttl)
    except ValueError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        return 2
    if source not in ("--secret", "JWT_SECRET"):
        print(f"[atas token] signed with atas dev's secret ({source})", file=sys.stderr)
    print(token)
    return 0
