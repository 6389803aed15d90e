"""Helpers shared by the subcommands (not a subcommand itself)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Literal

from atas.common.config import ConfigError, Settings, load_settings


def _exit_with(problems: list[str]) -> None:
    # One line per problem, each naming its variable: what an operator greps in a pod's log.
    for problem in problems:
        print(f"atas: {problem}", file=sys.stderr)
    raise SystemExit(2)


def settings_or_exit(mode: Literal["serve", "dev"] = "serve", *, need_db: bool = True) -> Settings:
    try:
        return load_settings(mode=mode, need_db=need_db)
    except ConfigError as exc:
        _exit_with(exc.problems)
        raise  # unreachable


def configs_or_exit(services: Iterable[str], *, mode: Literal["serve", "dev"] = "serve", need_db: bool = True,
                    env: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, object]]:
    """The common settings and each service's config, all parsed before anything starts.

    Every bad variable of every one of them is reported (one line each) and the process exits 2.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    settings = None
    try:
        settings = load_settings(env, mode=mode, need_db=need_db)
    except ConfigError as exc:
        problems += exc.problems
    configs: dict[str, object] = {}
    for service in services:
        loader = importlib.import_module(f"atas.{service}.config").load_config
        try:
            configs[service] = loader(env)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        _exit_with(problems)
    assert settings is not None
    return settings, configs


def die(message: str, code: int = 2) -> None:
    print(f"atas: {message}", file=sys.stderr)
    raise SystemExit(code)
