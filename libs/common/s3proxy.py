"""S3Proxy: a real S3-compatible server (SigV4, presigned URLs, multipart) with a file-system
backend, for ``atas stack up``, the test suite and CI. Apache-2.0, one jar from Maven Central
(``org.gaul:s3proxy``, classifier ``jar-with-dependencies``), fetched with Maven once and cached
next to Kafka's jars under ``~/.cache/atas/s3proxy/<version>``.

Kept apart from :mod:`atas.common.stack` (which calls :func:`up_s3` / :func:`s3_env`) so either can
change without the other.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import textwrap
from pathlib import Path

S3PROXY_VERSION = "3.0.0"
BUCKET = "atas"
REGION = "us-east-1"
MARKER = "s3proxy"  # what the server's command line contains


def s3proxy_jar(cache_dir: Path) -> Path:
    """The server jar, fetched with Maven on first use."""
    from .stack import StackError, _say

    folder = cache_dir / "s3proxy" / S3PROXY_VERSION
    jar = folder / f"s3proxy-{S3PROXY_VERSION}-jar-with-dependencies.jar"
    if jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (`mvn`) is needed once to fetch S3Proxy from Maven Central: install it "
                         "(`apt-get install maven`) or set STORAGE_URL/S3_ENDPOINT_URL to an existing store")
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"S3: fetching S3Proxy {S3PROXY_VERSION} with Maven (once)")
    proc = subprocess.run([mvn, "-q", "-B", "dependency:copy",
                           f"-Dartifact=org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies",
                           f"-DoutputDirectory={folder}"], capture_output=True, text=True, cwd=folder)
    if proc.returncode != 0 or not jar.exists():
        raise StackError("Maven could not fetch S3Proxy:\n" + (proc.stdout + proc.stderr)[-3000:])
    return jar


def launch_s3proxy(jar: Path, directory: Path, port: int, identity: str, credential: str,
                   log_file: Path) -> subprocess.Popen:
    """Start S3Proxy on 127.0.0.1:``port`` storing under ``directory/data``; returns at once."""
    from .stack import StackError

    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17+ is needed to run S3Proxy: apt-get install openjdk-17-jre-headless")
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    conf = directory / "s3proxy.conf"
    conf.write_text(textwrap.dedent(f"""\
        s3proxy.endpoint=http://127.0.0.1:{port}
        s3proxy.authorization=aws-v2-or-v4
        s3proxy.identity={identity}
        s3proxy.credential={credential}
        s3proxy.cors-allow-all=true
        jclouds.provider=filesystem
        jclouds.filesystem.basedir={data}
        """))
    with open(log_file, "ab") as log:
        return subprocess.Popen([java, "-Xmx256m", "-jar", str(jar), "--properties", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def create_bucket(port: int, identity: str, credential: str, bucket: str = BUCKET) -> None:
    """Create ``bucket`` (idempotent) with botocore's own client."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id=identity,
        aws_secret_access_key=credential, config=Config(s3={"addressing_style": "path"}))
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def up_s3(stack_dir: Path, cache_dir: Path, info: dict | None, running) -> dict:
    """Start (or reuse) the stack's S3Proxy; returns what ``state.json`` records for it."""
    from .ports import listener_is
    from .stack import StackError, _CHILDREN, _say, free_port, wait_for

    if running("s3", info):
        _say(f"S3 (S3Proxy) already running on 127.0.0.1:{info['port']}")
        return info
    jar = s3proxy_jar(cache_dir)
    directory = stack_dir / "s3"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    identity, credential = "atas-local", secrets.token_hex(16)
    log_file = stack_dir / "s3proxy.log"
    _say(f"S3: starting S3Proxy {S3PROXY_VERSION} on 127.0.0.1:{port}")
    proc = launch_s3proxy(jar, directory, port, identity, credential, log_file)
    _CHILDREN.append(proc)
    try:
        # Ours only once the listening socket is this process's (another stack may take a free port).
        wait_for(lambda: listener_is(proc.pid, port) or proc.poll() is not None, 60, "S3Proxy", log_file)
        if proc.poll() is not None:
            raise StackError(f"S3Proxy exited during start-up (code {proc.returncode}); see {log_file}")
        create_bucket(port, identity, credential)
    except BaseException:
        # The caller only stops servers whose start returned: this one must not outlive a failure.
        proc.kill()
        proc.wait()
        raise
    return {"pid": proc.pid, "port": port, "data": str(directory), "bucket": BUCKET,
            "access_key_id": identity, "secret_access_key": credential}


def s3_env(info: dict) -> dict[str, str]:
    """The variables that point ATAS at the stack's S3Proxy. Access keys here are the local
    server's own; a deployment gets its credentials from the provider's chain instead."""
    return {"STORAGE_URL": f"s3://{info['bucket']}", "S3_ENDPOINT_URL": f"http://127.0.0.1:{info['port']}",
            "S3_REGION": REGION, "AWS_ACCESS_KEY_ID": info["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": info["secret_access_key"]}
