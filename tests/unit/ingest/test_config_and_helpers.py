"""Pure parts of ingest: configuration, back-off, COPY encoding, status derivation, schemas."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import msgspec
import pytest

from atas.common.config import ConfigError
from atas.common.errors import ApiError, decode_json
from atas.common.schemas import ExecutionCreate, ResultBatch, ResultIn
from atas.ingest.config import IngestConfig, load_config
from atas.ingest.relay import backoff_delay
from atas.ingest.writer import _copy_data, request_hash, status_of_final_attempts


def test_config_defaults_and_environment():
    assert load_config({}) == IngestConfig()
    config = load_config({"INGEST_MAX_BATCH": "50", "INGEST_MAX_BODY_BYTES": "2048",
                                    "INGEST_RELAY_ENABLED": "0", "INGEST_RELAY_POLL_SECONDS": "0.5"})
    assert (config.max_batch, config.max_body_bytes, config.relay_enabled, config.relay_poll_s) == (
        50, 2048, False, 0.5)


def test_bad_config_names_every_variable():
    with pytest.raises(ConfigError) as info:
        load_config({"INGEST_MAX_BATCH": "0", "INGEST_RELAY_BATCH": "lots",
                               "INGEST_RELAY_BACKOFF_MAX_SECONDS": "-1"})
    text = str(info.value)
    assert "INGEST_MAX_BATCH" in text and "INGEST_RELAY_BATCH" in text and "INGEST_RELAY_BACKOFF_MAX_SECONDS" in text


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    top = lambda: 1.0  # noqa: E731 - the jitter at its maximum
    assert [round(backoff_delay(n, 30, rng=top), 2) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    assert backoff_delay(50, 30, rng=top) == 30
    assert 0 < backoff_delay(3, 30, rng=lambda: 0.0) <= 0.8


def test_derived_status_from_the_final_attempts():
    # (tests whose final attempt failed, tests whose final attempt errored)
    assert status_of_final_attempts(1, 0) == "failed"
    assert status_of_final_attempts(1, 3) == "failed"  # a failure outranks errors
    assert status_of_final_attempts(0, 1) == "error"
    assert status_of_final_attempts(0, 0) == "passed"  # also: only skipped tests, or none at all


def test_copy_text_escapes_only_what_it_must():
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    eid = uuid.UUID(int=1)
    plain = ResultIn(test_id="a", name="a", status="passed", duration_ms=5, attributes={"k": "v"})
    nasty = ResultIn(test_id="t\tab", name="back\\slash", status="failed", error_trace="l1\nl2\r",
                     error_message="\\N")
    lines = _copy_data(started, eid, "demo", [plain, nasty], with_ids=False).decode().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    first = lines[0].split("\t")
    assert first[:6] == [started.isoformat(), str(eid), "demo", "a", "1", "a"] and first[-1] == '{"k":"v"}'
    assert first.count("\\N") == 7  # suite, file, started_at, error type, message, trace, attachments
    second = lines[1].split("\t")
    assert len(second) == len(first)
    assert second[3] == "t\\tab" and second[5] == "back\\\\slash"
    assert "l1\\nl2\\r" in second and "\\\\N" in second  # a literal \N is not a NULL


def test_request_hash_ignores_key_order_but_not_values():
    a = ExecutionCreate(project="p", name="n", id=uuid.UUID(int=5), attributes={"x": 1, "y": 2})
    b = ExecutionCreate(project="p", name="n", id=uuid.UUID(int=5), attributes={"y": 2, "x": 1})
    c = ExecutionCreate(project="p", name="n", id=uuid.UUID(int=5), attributes={"x": 1, "y": 3})
    assert request_hash(a) == request_hash(b) != request_hash(c)


@pytest.mark.parametrize("body,field", [
    (b'{"results": []}', "results"),
    (b'{"results": [{"test_id": "", "name": "n", "status": "passed"}]}', "results[0].test_id"),
    (b'{"results": [{"test_id": "t", "name": "n", "status": "passed", "attempt": 0}]}', "results[0].attempt"),
    (b'{"results": [{"test_id": "t", "name": "n", "status": "passed", "duration_ms": -1}]}', "results[0].duration_ms"),
    (b'{"results": [{"test_id": "t", "name": "n", "status": "passed", "attachments": [{"id": "x"}]}]}',
     "results[0].attachments[0].id"),
])
def test_batch_validation_names_the_field(body, field):
    with pytest.raises(ApiError) as info:
        decode_json(body, ResultBatch)
    assert info.value.status == 422 and info.value.field == field


@pytest.mark.parametrize("attachment", [{"kind": "x"}, {"uri": "s3://b/k", "id": str(uuid.UUID(int=1))}])
def test_a_result_attachment_is_either_an_id_or_a_uri(attachment):
    from atas.common.schemas import limit_problem

    batch = decode_json(msgspec.json.encode({"results": [{"test_id": "t", "name": "n", "status": "passed",
                                                          "attachments": [{"uri": "s3://b/ok"}, attachment]}]}),
                        ResultBatch)
    field, message = limit_problem(batch)
    assert field == "results[0].attachments[1]" and "exactly one of `id`" in message


def test_the_openapi_schema_matches_the_structs():
    schema = msgspec.json.schema(ResultIn)
    assert schema["$defs"]["ResultIn"]["properties"]["attempt"]["minimum"] == 1
