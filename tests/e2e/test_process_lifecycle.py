"""Process-level behaviour of the shared skeleton: config errors at start, SIGTERM drain."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.e2e


def test_bad_redis_port_stops_start_up_naming_the_variable():
    env = {**os.environ, "DB_URL": "postgresql://h/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
           "JWT_SECRET": "s" * 32, "REDIS_PORT": "not-a-port"}
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "serve", "query"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "REDIS_PORT must be an integer" in proc.stderr


@pytest.mark.parametrize(("service", "variable", "value", "problem"), [
    ("ingest", "INGEST_MAX_BATCH", "abc", "must be an integer, got 'abc'"),
    ("query", "QUERY_MAX_PAGE_SIZE", "9999", "must be between 1 and 200, got 9999"),
    ("stream", "STREAM_HEARTBEAT_SECONDS", "soon", "must be a finite number, got 'soon'"),
])
def test_a_bad_service_variable_is_one_line_and_exit_2_before_anything_starts(service, variable, value, problem):
    """Service configs are parsed by the entry point: no traceback, nothing started (the
    database and Kafka named here do not exist, so a start would hang or fail differently)."""
    env = {**os.environ, "DB_URL": "postgresql://h/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
           "JWT_SECRET": "s" * 32, variable: value}
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "serve", service], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"atas: {variable} {problem}"]


def test_every_bad_variable_of_atas_dev_is_named_at_once(tmp_path):
    env = {**os.environ, "INGEST_MAX_BATCH": "0", "QUERY_MAX_RANGE_DAYS": "x", "STREAM_CLIENT_QUEUE": "-1",
           "HEALTH_LOOP_STALL_SECONDS": "never"}
    env.pop("DB_URL", None)
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "dev", "--data-dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 4, lines
    for name in ("INGEST_MAX_BATCH", "QUERY_MAX_RANGE_DAYS", "STREAM_CLIENT_QUEUE", "HEALTH_LOOP_STALL_SECONDS"):
        assert sum(line.startswith(f"atas: {name} ") for line in lines) == 1, (name, lines)
    assert not (tmp_path / "stack").exists(), "the embedded PostgreSQL was started before the check"


def test_the_stream_service_needs_no_database_url():
    """DB_URL unset: stream starts (stopped here by a bad variable of its own, after the common
    settings passed), where ingest refuses for DB_URL."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "JWT_SECRET": "s" * 32, "STREAM_RETRY_MS": "x"}
    env.pop("DB_URL", None)
    stream = subprocess.run([sys.executable, "-m", "atas.cli.main", "serve", "stream"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert stream.stderr.splitlines() == ["atas: STREAM_RETRY_MS must be an integer, got 'x'"]
    ingest = subprocess.run([sys.executable, "-m", "atas.cli.main", "serve", "ingest"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert ingest.returncode == 2 and "atas: DB_URL is required but not set" in ingest.stderr.splitlines()


SLOW_APP = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    from atas.common.app import create_app, serve
    from atas.common.config import Settings
    from atas.common.logging import configure_logging

    async def slow(request):
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.json_response({"done": True})

    async def main():
        configure_logging("info", service="slow")
        app = create_app(Settings(db=None, redis=None, kafka=None, jwt_secret="x"), "slow")
        app.router.add_get("/slow", slow)
        await serve(app, host="127.0.0.1", port=int(sys.argv[1]), drain_seconds=10)

    asyncio.run(main())
""")


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_sigterm_during_a_slow_request_lets_it_finish(tmp_path):
    port = free_port()
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    log = tmp_path / "slow_app.log"
    out_file = open(log, "wb")
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=out_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _get(base + "/healthz", 1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        result = {}
        t = threading.Thread(target=lambda: result.update(resp=_get(base + "/slow?s=2")))
        t.start()
        time.sleep(0.5)  # the request is in flight
        proc.terminate()  # SIGTERM
        t.join(15)
        status, body = result["resp"]
        assert status == 200 and json.loads(body) == {"done": True}
        assert proc.wait(15) == 0
        # once draining, new connections are refused
        with pytest.raises(OSError):
            _get(base + "/healthz", 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out_file.close()
    out = log.read_text()
    assert "draining in-flight requests" in out and '"stopped"' in out


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("command", ["migrate", "topic"])
def test_jobs_stop_on_sigterm_as_pid_1(command):
    """A Kubernetes Job's container runs `atas migrate` / `atas topic` as PID 1, where a signal
    without a handler is ignored: SIGTERM must still stop them (here while they wait for a server
    that accepts connections and never answers)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    env = {**os.environ, "DB_URL": f"postgresql://u@127.0.0.1:{port}/db",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "LOG_LEVEL": "warning"}
    try:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-m", "atas.cli.main", command],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        pytest.skip(f"unshare unavailable: {exc}")
    try:
        deadline = time.monotonic() + 10
        while not (kids := _children(proc.pid)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.skip(f"no PID namespace here: {proc.communicate()[1][-300:]}")
        assert kids, "the command did not start"
        time.sleep(2)  # started, and waiting for the server
        assert proc.poll() is None, proc.communicate()
        os.kill(kids[0], signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
        assert f"atas: {command} stopped by SIGTERM" in err
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        silent.close()
