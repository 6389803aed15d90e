"""Entry point of the ``atas`` command (one image, one CLI, every role a subcommand).

Subcommands are discovered: each module of ``atas.cli`` that defines
``register(subparsers) -> None`` adds its parser and sets ``func`` (called with the parsed args,
returning an exit code). Imports inside commands are lazy so ``atas --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import atas.cli as cli_pkg

# Order in `atas --help`; modules not listed come after, alphabetically.
_ORDER = ["serve", "migrate", "retention", "topic", "dev", "token", "stack", "import_", "tail", "load"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atas",
        description="ATAS: test-execution analytics. Ingest results, query dashboards, follow runs live.",
        epilog="Run `atas COMMAND --help` for a command's options. Configuration comes from the "
               "environment (DB_URL, REDIS_HOST, KAFKA_BOOTSTRAP_SERVERS, JWT_SECRET, ...): see README.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m.name for m in pkgutil.iter_modules(cli_pkg.__path__) if m.name not in ("main", "__init__")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"atas.cli.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
