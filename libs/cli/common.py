"""Helpers shared by the subcommands (not a subcommand itself)."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, Literal

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


class _Signalled(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def run_until_signalled(coro: Coroutine[Any, Any, int], what: str) -> int:
    """``asyncio.run(coro)``, stopped by SIGTERM or SIGINT: exit 128 + the signal's number.

    A process without a handler for SIGTERM ignores it when it is PID 1 (a container's entry
    point, a Kubernetes Job): the kubelet would wait out the grace period and SIGKILL it. Work cut
    short here is safe to redo (a migration's transaction rolls back; a topic is created or not).
    """
    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await coro
        except asyncio.CancelledError:
            if received:
                raise _Signalled(received[0]) from None
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except _Signalled as stop:
        print(f"atas: {what} stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return 128 + stop.signum


def die(message: str, code: int = 2) -> None:
    print(f"atas: {message}", file=sys.stderr)
    raise SystemExit(code)
