"""STORAGE_URL and the attachment knobs: parsed once at start, each bad value named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atas.common.config import ConfigError, load_settings
from atas.common.storage import content_disposition

BASE = {"DB_URL": "postgresql://h/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "JWT_SECRET": "s" * 40}


def test_s3_url_bucket_and_prefix():
    settings = load_settings({**BASE, "STORAGE_URL": "s3://atas-artifacts/ci/", "S3_REGION": "eu-west-1",
                              "ATTACHMENT_CONTENT_TYPES": "image/png, video/mp4"})
    st = settings.storage
    assert (st.scheme, st.bucket, st.prefix, st.region) == ("s3", "atas-artifacts", "ci/", "eu-west-1")
    assert st.allows("image/png") and not st.allows("image/svg+xml") and st.content_types == ("image/png", "video/mp4")
    assert load_settings(BASE).storage is None  # unset: attachments off


@pytest.mark.parametrize("env, variable", [
    ({"STORAGE_URL": "ftp://x"}, "STORAGE_URL"),
    ({"STORAGE_URL": "s3://"}, "STORAGE_URL"),
    ({"STORAGE_URL": "file://relative/path"}, "STORAGE_URL"),
    ({"STORAGE_URL": "gs://bucket"}, "STORAGE_URL"),
    ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
    ({"ATTACHMENT_MAX_BYTES": "lots"}, "ATTACHMENT_MAX_BYTES"),
    ({"ATTACHMENT_URL_TTL_SECONDS": "0"}, "ATTACHMENT_URL_TTL_SECONDS"),
    ({"ATTACHMENT_PART_BYTES": "1024"}, "ATTACHMENT_PART_BYTES"),
    ({"ATTACHMENT_CONTENT_TYPES": "png"}, "ATTACHMENT_CONTENT_TYPES"),
])
def test_bad_values_name_their_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "STORAGE_URL": "s3://b", **env})
    assert any(p.startswith(variable) for p in info.value.problems), info.value.problems


def test_serve_exits_2_naming_the_variable():
    env = {**BASE, "STORAGE_URL": "ftp://nope", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "atas.cli.main", "serve", "ingest"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "STORAGE_URL" in proc.stderr


def test_scriptable_types_download_instead_of_rendering():
    assert content_disposition("a.png", "image/png").startswith("inline;")
    for ctype in ("image/svg+xml", "text/html", "application/json", "text/plain"):
        assert content_disposition("x", ctype).startswith("attachment;")
    assert 'filename="_evil_.html"' in content_disposition('"evil".html', "text/html")
