"""Test helpers: run `atas` service processes and talk to them over HTTP."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

from atas.common.stack import free_port  # noqa: F401 - re-exported for tests


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class TlsFiles(NamedTuple):
    ca: Path  # the private CA's certificate: what a client trusts
    cert: Path  # the server's certificate, for 127.0.0.1, signed by the CA
    key: Path  # its private key (PKCS#8 PEM, unencrypted)


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1 it signed (valid 2 days), with openssl."""
    assert shutil.which("openssl"), "openssl is required (scripts/test installs it)"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=atas test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.p8")
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.p8")


class ServiceProcess:
    """``atas <args>`` as a subprocess listening on a free port; logs go to a file for post-mortems."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {**env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "atas.cli.main", *args], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}{path} not healthy after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int | None:
        stop_process(self.proc, timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
