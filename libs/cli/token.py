"""``atas token``: mint a JWT for a project and scopes."""

from __future__ import annotations

import argparse
import os
import sys

from atas.common.auth import SCOPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "token", help="mint a JWT for projects and scopes",
        description="Print a JWT signed with JWT_SECRET (HS256). Example: "
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
    p.add_argument("--secret", default=None, help="signing secret (default: $JWT_SECRET)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atas.common.auth import mint_token

    secret = args.secret or os.environ.get("JWT_SECRET")
    if not secret:
        print("atas: JWT_SECRET is not set; export it (e.g. `eval \"$(atas stack env)\"`) or pass --secret",
              file=sys.stderr)
        return 2
    try:
        token = mint_token(secret, subject=args.subject, scopes=args.scope or SCOPES, projects=args.project,
                           ttl_seconds=args.ttl)
    except ValueError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
