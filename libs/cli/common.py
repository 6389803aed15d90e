"""Helpers shared by the subcommands (not a subcommand itself)."""

from __future__ import annotations

import sys
from typing import Literal

from atas.common.config import ConfigError, Settings, load_settings


def settings_or_exit(mode: Literal["serve", "dev"] = "serve", *, need_db: bool = True) -> Settings:
    try:
        return load_settings(mode=mode, need_db=need_db)
    except ConfigError as exc:
        print(f"atas: {exc}", file=sys.stderr)
        print("atas: fix the variables above and start again (see README, Configuration).", file=sys.stderr)
        raise SystemExit(2) from None


def die(message: str, code: int = 2) -> None:
    print(f"atas: {message}", file=sys.stderr)
    raise SystemExit(code)
