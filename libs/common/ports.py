"""Loopback ports for the local stack, and whether the server listening on one is ours.

``free_port()`` asks the kernel for a port that is free *now*; between that and the server's own
bind, another ``atas stack up`` running in parallel may take it. A server that loses that race
either exits (it could not bind) or, worse, seems to start while the port answers for the other
stack's server. So a start counts only once the listening socket on the port belongs to the
process we started (:func:`listener_is`), and a lost race is retried on a new port.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_TCP_LISTEN = "0A"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listener_is(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on ``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{i}]" for i in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            continue
    return False
